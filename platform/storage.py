"""Where a sweep keeps its files: sweep ids, the sweep record, and paths or URIs in its storage.

A sweep's storage (`--storage`, a local folder or a URI such as `s3://bucket/sweeps` on a
cluster) holds one folder per sweep id: `sweep.json` (the record `--resume` reads), one Tune
experiment per phase, Train runs of nested trials under `train/`, and the tables. Every function
here computes and returns; nothing prints. Not here: MLflow (platform/tracking.py).
"""

import hashlib
import json
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_STORAGE = REPO / "runs" / "sweeps"


def make_sweep_id(plan, workers: int = 1) -> str:
    """`<kind>[-<grid>]-<preset>-<hash>`: the same options always give the same id. The Train
    world size is part of it (DDP shards batches, so results differ); GPUs and CPUs are not."""
    key = json.dumps({"kind": plan.kind, "preset": plan.preset, "data": plan.data, "options": plan.options,
                      "workers": workers}, sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    grid = plan.options.get("grid")
    return "-".join([plan.kind] + ([grid] if grid else []) + [plan.preset, digest])


def write_record(storage: str, sweep_id: str, record: dict) -> None:
    write_text(join(storage, sweep_id, "sweep.json"), json.dumps(record, indent=2, sort_keys=True))


def read_record(storage: str, sweep_id: str) -> dict | None:
    """A sweep's saved record from its storage folder, or None when there is none."""
    try:
        return json.loads(read_text(join(absolute(storage), sweep_id, "sweep.json")))
    except FileNotFoundError:
        return None


def write_text(path: str, text: str) -> None:
    if "://" in path:
        import pyarrow.fs

        filesystem, fs_path = pyarrow.fs.FileSystem.from_uri(path)
        filesystem.create_dir(fs_path.rsplit("/", 1)[0], recursive=True)
        with filesystem.open_output_stream(fs_path) as out:
            out.write(text.encode())
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)


def read_text(path: str) -> str:
    if "://" in path:
        import pyarrow.fs

        filesystem, fs_path = pyarrow.fs.FileSystem.from_uri(path)
        if filesystem.get_file_info(fs_path).type == pyarrow.fs.FileType.NotFound:
            raise FileNotFoundError(path)
        with filesystem.open_input_stream(fs_path) as stream:
            return stream.read().decode()
    return Path(path).read_text()


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def absolute(storage: str) -> str:
    return storage if "://" in storage else str(Path(storage).expanduser().resolve())


def local_path(storage: str) -> str | None:
    """The storage as a local folder, or None when it is a URI."""
    return None if "://" in storage else storage


def checkpoint_path(last_result: dict, checkpoint, storage: str) -> str | None:
    """Where a finished trial's last checkpoint is: a path, or a URI when storage is remote
    (the Ray adapter copies such inputs to the trial's node). `checkpoint`: Tune's."""
    if last_result.get("checkpoint_path"):
        path = last_result["checkpoint_path"]  # nested Train run
    elif checkpoint is not None:
        path = checkpoint.path
    else:
        return None
    scheme = storage.split("://", 1)[0] if "://" in storage else None
    return f"{scheme}://{path}" if scheme and "://" not in path else path


def in_job_dir(*locations: str) -> list[str]:
    """Those of `locations` inside this process's repo when it is a `ray job submit` working dir
    (a temporary copy Ray deletes afterwards)."""
    if "runtime_resources" not in str(REPO):
        return []
    return [where for where in locations if str(REPO) in where]


# ---------------------------------------------------------------- what a sweep has finished

def write_done(sweep_storage: str, name: str, checkpoint: str | None) -> None:
    """Record that a trial finished, and where its last checkpoint is (its dependents start there)."""
    write_text(join(sweep_storage, "done", f"{name}.json"), json.dumps({"name": name, "checkpoint": checkpoint}))


def read_done(sweep_storage: str) -> dict[str, str | None]:
    """{trial name: last checkpoint} of every finished trial of a sweep."""
    done = {}
    for path in _listing(join(sweep_storage, "done")):
        if path.endswith(".json"):
            record = json.loads(read_text(path))
            done[record["name"]] = record["checkpoint"]
    return done


def latest_checkpoint(sweep_storage: str, phase: str, trial: str) -> str | None:
    """The newest whole `checkpoint_*` folder (`resumable`) a trial left in any attempt of its
    phase (Tune's own checkpoints: a trial that ran in one Tuner resumes from it in the next), or None."""
    found = []
    for attempt in _listing(sweep_storage):
        name = attempt.rstrip("/").rsplit("/", 1)[-1]
        if name == phase or name.startswith(f"{phase}.attempt"):
            for folder in _listing(join(attempt, trial)):
                if folder.rsplit("/", 1)[-1].startswith("checkpoint_"):
                    found.append(folder)
    return next((folder for folder in sorted(found, key=_mtime, reverse=True) if resumable(folder)), None)


def resumable(folder: str) -> bool:
    """Whether a checkpoint folder holds, whole, what a trial resumes from: `checkpoint.pt` with
    its zip directory (torch.save writes it last, at the end of the file) and a `reports.json`
    that parses. Ray copies a checkpoint into storage file by file, so a trial killed during the
    copy leaves a folder with a file cut short: a fresh-clone run of tests/test_faults.py's
    driver SIGKILL (2026-12-04) left a 1 MiB `checkpoint.pt` newer than the last whole one."""
    import zipfile

    from trainables.checkpoint import CHECKPOINT_FILE
    from trainables.ray_adapter import REPORTS_FILE

    try:
        json.loads(read_text(join(folder, REPORTS_FILE)))
        with _open_input(join(folder, CHECKPOINT_FILE)) as stream, zipfile.ZipFile(stream):
            return True
    except (OSError, ValueError, zipfile.BadZipFile):  # missing, cut short, or not JSON
        return False


def next_attempt(sweep_storage: str, phase: str) -> str:
    """The Tune experiment name for the next run of a phase: `<phase>`, then `<phase>.attempt2`, ..."""
    names = {path.rstrip("/").rsplit("/", 1)[-1] for path in _listing(sweep_storage)}
    if phase not in names:
        return phase
    k = 2
    while f"{phase}.attempt{k}" in names:
        k += 1
    return f"{phase}.attempt{k}"


def _listing(path: str) -> list[str]:
    import pyarrow.fs

    filesystem, fs_path = pyarrow.fs.FileSystem.from_uri(path)
    try:
        infos = filesystem.get_file_info(pyarrow.fs.FileSelector(fs_path, allow_not_found=True))
    except (FileNotFoundError, NotADirectoryError):
        return []
    prefix = path[:len(path) - len(fs_path)] if "://" in path else ""
    return [prefix + info.path for info in infos]


def _open_input(path: str):
    """A seekable binary stream of a file in storage."""
    if "://" not in path:
        return open(path, "rb")
    import pyarrow.fs

    filesystem, fs_path = pyarrow.fs.FileSystem.from_uri(path)
    return filesystem.open_input_file(fs_path)


def _mtime(path: str) -> float:
    import pyarrow.fs

    filesystem, fs_path = pyarrow.fs.FileSystem.from_uri(path)
    info = filesystem.get_file_info(fs_path)
    return info.mtime.timestamp() if info.mtime else 0.0
