"""`python -m platform.sweep status SWEEP_ID`: where a sweep stands, from its storage and MLflow.

Works while the sweep runs and after it stopped or died: the plan comes from the sweep's record
(rebuilt from its saved options), finished trials from its storage (`done/`), states, last
metrics and failure reasons from the MLflow children, checkpoint ages from the newest
`checkpoint_*` folder of each trial. The last line is the command that continues the sweep.
"""

import time

import search_spaces
from platform import storage
from trainables.errors import UserInputError

SHOWN = ("image_AUROC", "KID_x1e3", "accuracy", "epoch", "kimg", "loss/total")


def status_text(sweep_id: str, sweep_storage: str, tracking_uri: str | None) -> str:
    record = storage.read_record(sweep_storage, sweep_id)
    if record is None:
        raise UserInputError(f"sweep {sweep_id}: no sweep.json in {storage.join(storage.absolute(sweep_storage), sweep_id)}; "
                             f"pass the sweep's --storage")
    plan = search_spaces.build(record["kind"], **record["build"])
    folder = storage.join(record["storage"], sweep_id)
    done = storage.read_done(folder)
    runs = _runs(tracking_uri or record["tracking_uri"], sweep_id)
    lines = [f"sweep {sweep_id} ({record['kind']}, preset {record['preset']}, {plan.n_runs} trials; "
             f"storage {record['storage']}; MLflow {tracking_uri or record['tracking_uri']})"]
    counts: dict[str, int] = {}
    for phase in plan.phases:
        for trial in phase.trials:
            run = runs.get(trial.name)
            state = _state(trial.name, done, run)
            counts[state.split()[0]] = counts.get(state.split()[0], 0) + 1
            checkpoint = storage.latest_checkpoint(folder, phase.name, trial.name)
            age = f"checkpoint {_age(storage._mtime(checkpoint))} ago" if checkpoint else "no checkpoint"
            metric = next((f"{k}={run.data.metrics[k]:.4g}" for k in SHOWN if run and k in run.data.metrics), "")
            lines.append(f"  {trial.name:<40} {state:<28} {metric:<24} {age}")
    lines.append("; ".join(f"{n} {state}" for state, n in sorted(counts.items())))
    unfinished = plan.n_runs - len([t for t in plan.trials if t.name in done])
    lines.append(f"{unfinished} unfinished; continue with: python -m platform.sweep {record['kind']} --resume "
                 f"{sweep_id} --storage {record['storage']}" if unfinished else
                 "every trial finished; tables: python -m platform.sweep report " + sweep_id)
    return "\n".join(lines)


def _runs(tracking_uri: str, sweep_id: str) -> dict:
    from platform import tracking

    try:
        parent = tracking.find_parent(tracking_uri, sweep_id)
        return {r.data.tags.get(tracking.TRIAL_NAME_TAG, r.info.run_name): r
                for r in tracking.children(tracking_uri, parent.info.run_id)} if parent else {}
    except Exception as error:  # the store is away: states from storage alone
        print(f"note: MLflow {tracking_uri} unreadable ({type(error).__name__}); states from the storage only")
        return {}


def _state(name: str, done: dict, run) -> str:
    if name in done:
        return "done"
    if run is None:
        return "pending"
    status = run.info.status
    if status == "FAILED":
        return f"failed: {run.data.tags.get('error', '?')[:60]}"
    if status == "KILLED":
        return "killed"
    if status == "RUNNING":
        return "running"
    return status.lower()


def _age(mtime: float) -> str:
    seconds = max(0.0, time.time() - mtime)
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"
