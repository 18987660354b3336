"""`platform/__init__.py` stands in for the standard library module from the repo root."""

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_from_root(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_standard_functions_match_the_standard_module():
    spec = importlib.util.spec_from_file_location("stdlib_platform", Path(os.__file__).parent / "platform.py")
    stdlib = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stdlib)
    result = run_from_root("import platform; print(platform.__file__); "
                           "print(platform.system(), platform.python_version(), platform.machine())")
    assert result.returncode == 0, result.stderr
    where, values = result.stdout.splitlines()
    assert where == str(REPO / "platform" / "__init__.py")  # ours, not the standard one
    assert values == f"{stdlib.system()} {stdlib.python_version()} {stdlib.machine()}"


def test_heavy_libraries_import_from_the_repo_root():
    result = run_from_root("import uuid, torch, ray, mlflow; uuid.uuid4(); print('ok')")
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_trainables_never_import_platform():
    offenders = [str(p) for p in (REPO / "trainables").rglob("*.py")
                 if any(line.lstrip().startswith(("import platform", "from platform"))
                        for line in p.read_text().splitlines())]
    assert offenders == []


def test_sweep_help_exits_0():
    result = subprocess.run([sys.executable, "-m", "platform.sweep", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ablation" in result.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_start_head_from_repo_root_keeps_dashboard_up(tmp_path):
    """`ray start --head` imports `platform` from the root; the dashboard must come up and stay."""
    ray = shutil.which("ray", path=str(Path(sys.executable).parent))
    port, dashboard = free_port(), free_port()
    temp_dir = Path("/tmp") / f"ray-standin-{os.getpid()}"  # short: Ray's socket paths are limited
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    head = subprocess.Popen(
        [ray, "start", "--head", "--block", f"--port={port}", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dashboard}", "--num-cpus=1", f"--temp-dir={temp_dir}", "--include-dashboard=true"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        up_since = None
        deadline = time.time() + 120
        while time.time() < deadline:
            assert head.poll() is None, head.stdout.read()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{dashboard}/", timeout=2) as response:
                    assert response.status == 200
                up_since = up_since or time.time()
                if time.time() - up_since > 10:  # stayed up, not a flash before a crash
                    break
            except OSError:
                up_since = None
            time.sleep(1)
        assert up_since and time.time() - up_since > 10, "dashboard never stayed up"
    finally:
        os.killpg(head.pid, 15)
        head.wait(timeout=60)
        shutil.rmtree(temp_dir, ignore_errors=True)
