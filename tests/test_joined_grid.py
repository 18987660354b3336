"""The joined grid of both papers: DFMGAN's triplets as the detector's third appearance source.

Unit tests of its parts (the triplet bank and the synthesis that draws from it, the leakage-safe
split, the plan with several dependencies per trial, the refusal to start without banks), then
the three phases end to end on one embedded category with two λ values, on a real local Ray
runtime (a module-scoped fixture of its own) and a real SQLite MLflow store.
"""

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import search_spaces
from trainables.data import EMBEDDED_CATEGORIES
from platform import runner, sweep, tracking
from platform.resources import Resources
from search_spaces.base import TrialSpec
from trainables.data import load_category, resolve_data
from trainables.data.split import eval_indices, held_back, holdout_split, split_partition, stage2_indices
from trainables.detector.synthesis import AnomalySynthesizer, SynthesisParams, load_triplet_bank
from trainables.errors import UserInputError
from trainables.gan.generate import TRIPLETS_FILE, save_triplets

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def write_bank(folder: Path, defect: str, n: int, res: int = 16, category: str = "bolt", lam: float = 0.1,
               seed: int = 0) -> Path:
    """A stage-2 checkpoint folder with `n` recognisable triplets: the defect image is the twin
    with a random colour inside the mask."""
    rng = np.random.default_rng(seed)
    good = rng.integers(0, 256, (n, res, res, 3), np.uint8)
    mask = np.zeros((n, res, res), np.uint8)
    mask[:, res // 4:res // 2, res // 4:res // 2] = 1
    image = np.where(mask[..., None] == 1, rng.integers(0, 256, (n, 1, 1, 3), np.uint8), good).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    save_triplets(folder, {"image": image, "mask": mask, "good": good, "category": category, "defect": defect,
                           "lambda_ms": lam})
    return folder


# ---------------------------------------------------------------- the bank and the synthesis

def test_bank_holds_equal_numbers_per_defect_type_at_the_detectors_size(tmp_path):
    folders = [write_bank(tmp_path / "hole", "hole", 5, seed=1), write_bank(tmp_path / "scratch", "scratch", 3)]
    bank = load_triplet_bank([str(f) for f in folders], "bolt", 32)
    assert bank.image.shape == bank.good.shape == (6, 32, 32, 3) and bank.mask.shape == (6, 32, 32)
    assert bank.defect == ("hole",) * 3 + ("scratch",) * 3 and bank.lambda_ms == 0.1
    assert set(np.unique(bank.mask)) == {0, 1}  # masks resized nearest-neighbour stay binary


def test_a_dfmgan_sample_is_a_generated_triplet_and_the_rest_are_real_good_images(tmp_path):
    folders = [write_bank(tmp_path / "hole", "hole", 4, res=32, seed=1),
               write_bank(tmp_path / "scratch", "scratch", 4, res=32, seed=2)]
    bank = load_triplet_bank([str(f) for f in folders], "bolt", 32)
    train = np.random.default_rng(3).integers(0, 256, (5, 32, 32, 3), np.uint8)
    synth = AnomalySynthesizer(train, "object", None, SynthesisParams(p_anom=0.5), bank)
    batch = synth.batch(np.random.default_rng(0), 400)
    from_bank = batch["from_bank"]
    assert 0.4 < from_bank.mean() < 0.6
    I, I_a, M = batch["I"], batch["I_a"], batch["M"][:, 0].astype(bool)
    goods, images = bank.good.astype(np.float32) / 255, bank.image.astype(np.float32) / 255
    for k in np.flatnonzero(from_bank):
        j = int(np.argmin(np.abs(images - I_a[k].transpose(1, 2, 0)).sum(axis=(1, 2, 3))))
        # I_a is the bank's defect image (its masked region included), I its twin, M its mask
        assert np.array_equal(I_a[k].transpose(1, 2, 0)[M[k]], images[j][M[k]])
        assert np.array_equal(I[k].transpose(1, 2, 0), goods[j]) and np.array_equal(M[k], bank.mask[j] == 1)
        assert batch["y"][k] == 1
    real = ~from_bank
    assert not M[real].any() and np.array_equal(I[real], I_a[real])  # the rest: clean real images
    assert (batch["y"][real] == 0).all()


def test_bank_errors_name_the_field_and_path(tmp_path):
    with pytest.raises(UserInputError, match=r"^dfmgan_banks: .*got none"):
        load_triplet_bank((), "bolt", 32)
    with pytest.raises(UserInputError, match=re.escape(str(tmp_path / TRIPLETS_FILE))):
        load_triplet_bank((str(tmp_path),), "bolt", 32)
    other = write_bank(tmp_path / "w", "hole", 2, category="weave")
    with pytest.raises(UserInputError, match="another category"):
        load_triplet_bank((str(other),), "bolt", 32)


def test_dfmgan_source_refuses_to_start_without_its_banks(tmp_path):
    """The command line says so in one line (exit 2, no traceback), before any data is decoded."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "platform.train", "detector", "--category", "bolt", "--preset",
                           "tiny", "--set", "anomaly_source=dfmgan", "--out", str(tmp_path / "out")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert "Traceback" not in done.stderr and len(errors) == 1, done.stderr
    assert errors[0].startswith("error: dfmgan_banks: anomaly_source=dfmgan needs") and "\n" not in errors[0]
    assert done.stderr.strip().splitlines()[-1] == errors[0]


# ---------------------------------------------------------------- the leakage-safe split

def test_detector_eval_set_and_stage2_training_sets_are_disjoint():
    from trainables.gan.config import make_config as gan_config
    from trainables.gan.train import load_images

    data = load_category(resolve_data("embedded").path, "bolt", 32)
    evaluated = held_back(data, 0, 1 / 3)
    keep = eval_indices(data.test_types, 0, 1 / 3)
    assert evaluated.test_types.count("good") == data.test_types.count("good")  # every good test image
    digest = {hashlib.sha1(x.tobytes()).hexdigest() for x in evaluated.test}
    learnt = 0
    for defect in data.defect_types:
        cfg = gan_config("tiny", {"category": "bolt", "defect": defect, "holdout_seed": 0})
        images, masks = load_images(cfg, 2)  # what stage 2 trains on
        learnt += len(images)
        assert not digest & {hashlib.sha1(x.tobytes()).hexdigest() for x in images}
        base = stage2_indices(data.test_types, defect, 0, 1 / 3)
        assert not set(base) & set(keep) and len(images) == len(base) == round(len(data.defects(defect)[0]) / 3)
        # the classification protocol's partition P1 (seed 0) learns from the same images
        split = split_partition({t: len(data.defects(t)[0]) for t in data.defect_types}, 0, 0, 1 / 3)
        assert np.array_equal(data.defects(defect)[0][split[defect][0]], images)
    assert len(keep) + learnt == len(data.test_types)  # the two sets cover the test split
    assert holdout_split(data.test_types, 0, 1 / 3).keys() == set(data.defect_types)


# ---------------------------------------------------------------- the plan

def test_joined_plan_has_three_phases_and_several_dependencies_per_detector():
    plan = search_spaces.build("ablation", categories=["bolt"], rows=[7], sources=["mvtec", "dfmgan"],
                               lambdas=[0, 0.1], preset="tiny", extra={"gan.stage1_kimg": "0.008"})
    stage1, stage2, trials = plan.phases
    assert [t.name for t in stage1.trials] == ["bolt-stage1-s0"] and stage1.trials[0].cfg.stage1_kimg == 0.008
    defects = sorted(EMBEDDED_CATEGORIES["bolt"][1])
    assert sorted(t.name for t in stage2.trials) == sorted(
        f"bolt-{d}-lambda{lam}-s0" for d in defects for lam in ("0", "0.1"))
    assert {t.cfg.holdout_seed for t in stage2.trials} == {0}
    groups = {t.group: t for t in trials.trials}
    assert set(groups) == {"row 7", "row 7 · DFMGAN (λ=0)", "row 7 · DFMGAN (λ=0.1)"}
    dfmgan = groups["row 7 · DFMGAN (λ=0.1)"]
    assert dfmgan.needs == tuple(f"bolt-{d}-lambda0.1-s0" for d in defects)
    assert dfmgan.needs_key == "dfmgan_banks" and dfmgan.params["texture_source"] == "DFMGAN (λ=0.1)"
    assert groups["row 7"].needs == () and {t.cfg.eval_holdout_seed for t in trials.trials} == {0}
    # the key receives every dependency's folder, in order; one failed dependency skips the trial
    done = {f"bolt-{d}-lambda0.1-s0": f"/ck/{d}" for d in defects}
    assert runner.with_dependency(dfmgan, done).cfg.dfmgan_banks == tuple(f"/ck/{d}" for d in defects)
    assert runner.with_dependency(dfmgan, {"bolt-hole-lambda0.1-s0": "/ck/hole"}) is None
    assert runner.missing_dependencies(dfmgan, {"bolt-hole-lambda0.1-s0": "/ck/hole"}) == [
        f"bolt-{d}-lambda0.1-s0" for d in defects if d != "hole"]
    # a one-dependency trial (stage 2) still receives one folder
    assert runner.with_dependency(stage2.trials[0], {"bolt-stage1-s0": "/ck/s1"}).cfg.stage1 == "/ck/s1"
    # factorial: the source axis; λ multiplies only the dfmgan variants
    factorial = search_spaces.build("ablation", grid="factorial", categories=["bolt"], sources=["dtd", "dfmgan"],
                                    lambdas=[0, 0.5], preset="tiny")
    detectors = factorial.phases[-1].trials
    assert len(detectors) == 6 * 3 and sum("dfmgan" in t.name for t in detectors) == 12
    with pytest.raises(UserInputError, match="--lambdas"):
        search_spaces.build("ablation", categories=["bolt"], lambdas=[0.1], preset="tiny")
    with pytest.raises(UserInputError, match="--sources"):
        search_spaces.build("ablation", categories=["bolt"], sources=["gan"], preset="tiny")
    assert isinstance(TrialSpec("m", "n", "g", "c", 0, {}, {}, needs="a", needs_key="k").needs, tuple)


# ---------------------------------------------------------------- end to end on Ray + MLflow

@pytest.fixture(scope="module")
def ray_runtime():
    import ray

    path = os.pathsep.join([str(TESTS), str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    ray.init(address="local", num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1",
             logging_level="WARNING", runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield ray
    ray.shutdown()


def test_joined_grid_end_to_end(ray_runtime, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = str(tmp_path / "storage")
    argv = ["ablation", "--data", "embedded", "--categories", "bolt", "--rows", "7", "--sources", "mvtec", "dfmgan",
            "--lambdas", "0", "0.1", "--preset", "tiny", "--storage", storage, "--tracking-uri", uri]
    assert sweep.main(argv) == 0
    out = capsys.readouterr().out
    sweep_id = re.search(r"^sweep (\S+):", out, re.M).group(1)
    parent = tracking.find_parent(uri, sweep_id)
    children = {c.info.run_name: c for c in tracking.children(uri, parent.info.run_id)}
    defects = sorted(EMBEDDED_CATEGORIES["bolt"][1])
    stage2 = [f"bolt-{d}-lambda{lam}-s0" for d in defects for lam in ("0", "0.1")]
    detectors = ["bolt-df_copy-lk-src_mvtec-s0", "bolt-df_copy-lk-src_dfmgan_l0-s0", "bolt-df_copy-lk-src_dfmgan_l0.1-s0"]
    assert sorted(children) == sorted(["bolt-stage1-s0", *stage2, *detectors])
    assert all(c.info.status == "FINISHED" for c in children.values())
    # dependencies are recorded on the runs
    for name in stage2:
        assert children[name].data.params["needs"] == "bolt-stage1-s0"
    client = tracking.client(uri)
    data = load_category(resolve_data("embedded").path, "bolt", 32)
    n_eval = len(eval_indices(data.test_types, 0, 1 / 3))
    assert n_eval < len(data.test_types)
    for lam in ("0", "0.1"):
        run = children[f"bolt-df_copy-lk-src_dfmgan_l{lam}-s0"]
        assert run.data.params["needs"] == ",".join(f"bolt-{d}-lambda{lam}-s0" for d in defects)
        banks = run.data.params["dfmgan_banks"].split(",")
        assert len(banks) == len(defects) and all((Path(b) / TRIPLETS_FILE).is_file() for b in banks)
        metrics = run.data.metrics
        # tiny: 2 epochs x 2 steps x 4 samples, p_anom 0.5; a pure function of the seed, so fixed
        assert 0 < metrics["dfmgan_samples"] < 16 and metrics["dfmgan_bank_size"] == len(defects) * 8
        assert metrics["n_test"] == n_eval
        pictures = {f.path for f in client.list_artifacts(run.info.run_id, "pictures")}
        assert "pictures/dfmgan_triplets.png" in pictures
    mvtec = children["bolt-df_copy-lk-src_mvtec-s0"].data
    assert mvtec.metrics["n_test"] == n_eval and "dfmgan_samples" not in mvtec.metrics  # the same test set
    # the λ table: every cell filled (KID/LPIPS may be 'unavailable' without Inception/AlexNet weights)
    table = Path(client.download_artifacts(parent.info.run_id, "tables/v1/lambda_table.md")).read_text()
    assert "DFMGAN (λ=0)" in table and "DFMGAN (λ=0.1)" in table and "| mvtec" in table
    assert "–" not in table.split("\n\n")[1] and "Test split (joined grid)" in table
    summary = Path(client.download_artifacts(parent.info.run_id, "tables/v1/ablation_summary.md")).read_text()
    assert "row 7 · DFMGAN (λ=0.1)" in summary

    # a gan sweep with the same settings afterwards retrains nothing: it takes the finished checkpoints
    argv = ["gan", "--data", "embedded", "--categories", "bolt", "--lambdas", "0", "--preset", "tiny",
            "--set", "holdout_seed=0",
            "--storage", storage, "--tracking-uri", uri]
    assert sweep.main(argv) == 0
    out = capsys.readouterr().out
    assert "reusing the finished checkpoint" in out and "phase stage2:" not in out
    gan_id = re.search(r"^sweep (\S+):", out, re.M).group(1)
    gan_runs = tracking.children(uri, tracking.find_parent(uri, gan_id).info.run_id)
    assert sorted(r.info.run_name for r in gan_runs) == sorted([f"bolt-{d}-lambda0-s0" for d in defects]
                                                               + ["bolt-stage1-s0"])
    assert all(r.data.tags.get("reused_from") for r in gan_runs)
    assert json.loads(Path(client.download_artifacts(gan_runs[0].info.run_id, "config.json")).read_text())


def test_a_trial_skipped_for_a_failed_gan_is_a_killed_run_and_a_table_note(tmp_path):
    """What the runner logs for a detector whose stage-2 dependency failed, read back by the tables."""
    from platform import tables

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    plan = search_spaces.build("ablation", categories=["bolt"], rows=[7], sources=["dfmgan"], lambdas=[0.1],
                               preset="tiny")
    trial = next(t for t in plan.phases[-1].trials if "dfmgan" in t.name)
    planned = runner.Sweep(plan, {}, "joined-skip", Resources(1, 0, 1, None, None), str(tmp_path), uri,
                           "joined-test").planned()  # what the runner records as plan.json
    parent = tracking.open_parent(uri, "joined-test", "joined-skip", {"kind": "ablation"},
                                  {"kind": "ablation", "dataset": "embedded"}, planned)
    missing = runner.missing_dependencies(trial, {"bolt-hole-lambda0.1-s0": "/ck"})
    reason = f"needs {', '.join(missing)}, which did not finish"
    tracking.log_untrained(uri, parent, {"dataset": "embedded"}, trial, "KILLED", {"skipped": reason})
    [run] = [r for r in tracking.children(uri, parent) if r.info.run_name == trial.name]
    others = [f"bolt-{d}-lambda0.1-s0" for d in sorted(EMBEDDED_CATEGORIES["bolt"][1]) if d != "hole"]
    assert run.info.status == "KILLED" and run.data.tags["skipped"] == f"needs {', '.join(others)}, which did not finish"
    assert run.data.params["needs"] == ",".join(sorted(["bolt-hole-lambda0.1-s0", *others]))
    built = {t.name: t for t in tables.build_and_log(uri, parent)}
    lam = built["lambda_table"]
    rows = lam.frame.reset_index().set_index("source")
    assert rows.loc["DFMGAN (λ=0.1)", "image AUROC"] == tables.MISSING and rows.loc["DFMGAN (λ=0.1)", "category"] == "bolt"
    assert any(f"{trial.name} (needs {others[0]}" in note for note in lam.notes)
