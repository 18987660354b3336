"""The background MLflow writer (platform/writer.py) against a slow store: a real SQLite store
whose every call takes a while, fed faster than it can write, as Tune's loop feeds it.

What must hold: every report lands, in order, in its run's metric histories; consecutive
reports of a run are coalesced (fewer store calls than reports); a queued call runs only
after everything queued before it; and `flush()` returns only when everything is written.
"""

import time

from mlflow.tracking import MlflowClient

from platform.writer import RunRef, Writer

DELAY_S = 0.03   # per store call


class SlowClient:
    """An MlflowClient whose every method call first sleeps (a remote or busy store); counts calls."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = 0

    def __getattr__(self, name):
        method = getattr(self.inner, name)

        def slow(*args, **kwargs):
            self.calls += 1
            time.sleep(DELAY_S)
            return method(*args, **kwargs)
        return slow


def test_writer_drains_a_slow_store_in_order_and_coalesces(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store = MlflowClient(tracking_uri=uri)
    experiment = store.create_experiment("writer")
    writer = Writer(uri, outage_s=30)
    slow = writer.client = SlowClient(writer.client)

    runs = [RunRef(f"trial-{k}") for k in range(3)]
    seen_at_end = {}    # run name -> points of its history when its end call ran

    def create(client, ref):
        ref.run_id = client.create_run(experiment, run_name=ref.name).info.run_id

    def end(client, ref):
        seen_at_end[ref.name] = len(store.get_metric_history(ref.run_id, "loss"))   # not a counted call
        client.set_terminated(ref.run_id, status="FINISHED")

    reports, blocks = 40, 4
    for ref in runs:
        writer.call(ref, create, f"{ref.name}: create")
    for block in range(blocks):          # interleaved as concurrent trials report: 10 of A, 10 of B, ...
        for ref in runs:
            for step in range(block * reports // blocks + 1, (block + 1) * reports // blocks + 1):
                writer.log(ref, step, {"loss": 1.0 / step, "trainer_s": 0.1 * step}, {"phase": f"block{block}"})
    writer.log(runs[0], 5, {"loss": -1.0, "trainer_s": 0.0}, {})   # a replayed step: dropped, not logged
    for ref in runs:
        writer.call(ref, end, f"{ref.name}: end")

    queued = 3 + 3 * reports + 1 + 3
    assert writer.flush(timeout=DELAY_S / 3) is False, "flush claimed success with writes still queued"
    began = time.monotonic()
    assert writer.flush(timeout=60) is True and writer.failed is None
    assert time.monotonic() - began > DELAY_S, "flush returned before the slow store was written"
    assert writer.queue.unfinished_tasks == 0 and writer.pending() == []

    # everything is in the store the moment flush() returns
    fresh = MlflowClient(tracking_uri=uri)
    for ref in runs:
        history = fresh.get_metric_history(ref.run_id, "loss")
        assert sorted(m.step for m in history) == list(range(1, reports + 1)), ref.name
        assert {m.step: m.value for m in history} == {s: 1.0 / s for s in range(1, reports + 1)}  # no replay
        assert len(fresh.get_metric_history(ref.run_id, "trainer_s")) == reports
        run = fresh.get_run(ref.run_id)
        assert run.info.status == "FINISHED" and run.data.tags["phase"] == f"block{blocks - 1}"
        assert seen_at_end[ref.name] == reports, "a call queued after reports ran before they were written"
        assert ref.last_step == reports

    # coalescing: the reports between two calls share one log_batch per run, far fewer than the reports
    assert slow.calls == writer.requests, "no call should have been retried"
    assert writer.requests < queued / 4, (writer.requests, queued)
    assert writer.requests >= 3 + 3 + 3   # each create, at least one log_batch per run, each end
