"""Background MLflow writes for the sweep driver: Tune's event loop never waits on the store.

The tracking callback turns each trial event into operations on a `Writer`: create (or find
again) a trial's child run, log a report's metrics and tags, upload its checkpoint and
pictures, end the run. One thread drains a bounded queue in order; the metric reports queued
between two other operations (and within half a second of each other) become one `log_batch`
call per run. A failing call (the server restarting, a SQLite lock) is
retried with backoff, so training goes on while the store is away and everything queued is
written when it is back. Past `outage_s` of failures the writer gives up: `failed` says why and
what was not saved, and the callback fails the sweep loudly with it.

A run is referred to by a `RunRef` whose id is filled in when its create operation runs, so
creation is queued like everything else. A report whose `step` is not after the run's last
logged step is a replay (a trial restarted from its checkpoint reports those steps again) and
is dropped: every metric history stays strictly increasing. Not here: what to log (the
callback, platform/tracking.py).
"""

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

STEP_METRIC = "trainer_s"       # every report carries it: its history tells a reopened run's last step
MAX_BATCH = 1000                # metrics per log_batch call (the store's limit)
MAX_OPS = 200                   # reports coalesced into one round of log_batch calls
LINGER_S = 0.5                  # how long a report waits for others to share its call


@dataclass
class RunRef:
    """A trial's child run, before and after the store has assigned it an id."""
    name: str
    run_id: str | None = None
    last_step: int = 0           # the highest step logged for this run


@dataclass
class _Op:
    kind: str                    # "call" | "metrics"
    ref: RunRef | None
    fn: Callable | None = None   # "call": fn(client, ref)
    step: int = 0                # "metrics": the report's step
    metrics: dict = field(default_factory=dict)
    tags: dict = field(default_factory=dict)
    what: str = ""               # for the "not saved" message
    at: int = 0                  # "metrics": when reported (ms since the epoch), the metrics' timestamp


class Writer:
    def __init__(self, tracking_uri: str, outage_s: float = 600.0, maxsize: int = 100_000):
        from platform.tracking import client

        self.client = client(tracking_uri)
        self.tracking_uri = tracking_uri
        self.outage_s = outage_s
        self.queue: queue.Queue[_Op] = queue.Queue(maxsize)
        self.failed: str | None = None
        self.requests = 0            # calls made to the store (retries included)
        self._outage = False
        self._thread = threading.Thread(target=self._drain, name="mlflow-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ producers (Tune's thread)

    def call(self, ref: RunRef | None, fn: Callable, what: str) -> None:
        """Queue `fn(client, ref)`, in order with everything else queued."""
        self._put(_Op("call", ref, fn=fn, what=what))

    def log(self, ref: RunRef, step: int, metrics: dict[str, float], tags: dict[str, str]) -> None:
        """Queue one report's metrics (at `step`) and tags."""
        self._put(_Op("metrics", ref, step=step, metrics=metrics, tags=tags, what=f"{ref.name} report {step}",
                      at=int(time.time() * 1000)))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is written (or given up); True when written."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.queue.unfinished_tasks:
            if self.failed or deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return self.failed is None

    def pending(self) -> list[str]:
        """What is queued and not written yet, one line each."""
        return [op.what for op in list(self.queue.queue)]

    def _put(self, op: _Op) -> None:
        if self.failed is None:
            self.queue.put(op)

    # ------------------------------------------------------------ the writer thread

    def _drain(self) -> None:
        while True:
            op = self.queue.get()
            batch = [op]
            # coalesce the reports that follow, of any run, up to the next call (a call may create
            # or end a run: it stays in order); wait up to LINGER_S for more, so concurrent trials'
            # reports share one call per run even when the store keeps up
            deadline = time.monotonic() + LINGER_S
            while op.kind == "metrics" and len(batch) < MAX_OPS:
                try:
                    following = self.queue.queue[0]
                except IndexError:
                    if time.monotonic() >= deadline:
                        break
                    time.sleep(0.02)
                    continue
                if following.kind != "metrics":
                    break
                batch.append(self.queue.get_nowait())
            try:
                self._with_retries(lambda: self._run(batch), batch[0].what)
            finally:
                for _ in batch:
                    self.queue.task_done()

    def _run(self, batch: list[_Op]) -> None:
        op = batch[0]
        if op.kind == "call":
            self.requests += 1
            op.fn(self.client, op.ref)
            return
        by_run: dict[int, list[_Op]] = {}   # each run's reports, in order
        for o in batch:
            by_run.setdefault(id(o.ref), []).append(o)
        for ops in by_run.values():
            self._log_run(ops)

    def _log_run(self, ops: list[_Op]) -> None:
        """One run's reports, as few log_batch calls as the store allows; on a retry, a run
        already written is skipped (its last step moved on)."""
        from mlflow.entities import Metric, RunTag

        ref = ops[0].ref
        fresh, last = [], ref.last_step
        for o in ops:   # a replayed step (not after the last one logged or kept) is dropped
            if o.step > last:
                fresh.append(o)
                last = o.step
        metrics = [Metric(k, v, o.at, o.step) for o in fresh for k, v in o.metrics.items()]
        tags = {k: v for o in fresh for k, v in o.tags.items()}
        for start in range(0, len(metrics), MAX_BATCH):
            self.requests += 1
            self.client.log_batch(ref.run_id, metrics=metrics[start:start + MAX_BATCH],
                                  tags=[RunTag(k, v) for k, v in tags.items()] if start == 0 else [])
        if not metrics and tags:
            self.requests += 1
            self.client.log_batch(ref.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        if fresh:
            ref.last_step = max(o.step for o in fresh)

    def _with_retries(self, action: Callable, what: str) -> None:
        if self.failed:
            return
        first_failure, delay = None, 0.5
        while True:
            try:
                action()
                if self._outage:
                    print("MLflow store reachable again; writing what was queued", flush=True)
                    self._outage = False
                return
            except Exception as error:  # the store: a connection refused, a timeout, a lock
                now = time.monotonic()
                first_failure = first_failure or now
                if now - first_failure > self.outage_s:
                    unsaved = [what] + self.pending()
                    self.failed = (f"the MLflow store {self.tracking_uri} failed for more than {self.outage_s:.0f} s "
                                   f"({type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}); "
                                   f"not saved: {len(unsaved)} operations ({'; '.join(unsaved[:5])}"
                                   f"{'; ...' if len(unsaved) > 5 else ''})")
                    return
                if not self._outage:
                    self._outage = True
                    print(f"MLflow store unreachable ({type(error).__name__}); training goes on, writes are queued "
                          f"and retried for up to {self.outage_s:.0f} s", flush=True)
                time.sleep(delay)
                delay = min(2 * delay, 10.0)
