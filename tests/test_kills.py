"""Hard kills: SIGKILL a `kit` process at a chosen point (tests/kill_harness.py), then check that no later
stage reads the interrupted run or a half-written file, that `kit runs` shows the run as stale, and that
the next run of the same command succeeds (`kit train --resume` continuing the same MLflow runs)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import install_dataset, sha256
from typer.testing import CliRunner

from kit import tracking
from kit.cli import app

pytestmark = pytest.mark.slow

HARNESS = Path(__file__).resolve().parent / "kill_harness.py"
CORPUS = Path(__file__).resolve().parent / "corpus"
TRAIN_3_EPOCHS = [
    "--set",
    "training.epochs=3",
    "--set",
    "training.max_steps_per_epoch=1",
    "--set",
    "data.crop_size=64",
    "--set",
    "tracking.log_model=false",
]
ENSEMBLE = [
    "--exp",
    "ensemble",
    *("--set", "ensemble.bases=[unet_tiny]"),
    *("--set", "ensemble.split_thresholds=[0.3]"),
    *("--set", "ensemble.n_bags=1"),
    *("--set", "ensemble.n_folds=2"),
    *("--set", "ensemble.lightgbm.num_boost_round=5"),
    *("--set", "ensemble.lightgbm.min_data_in_leaf=3"),
    *("--set", "data.root=data/synthetic"),
    *("--set", "tracking.log_model=false"),
]


def killed(target: str, nth: int, *args: str, after: bool = False, match: str | None = None) -> str:
    """Run `kit ARGS` in the working directory and SIGKILL it at the `nth` call of `target`; its stderr."""
    options = [*(["--after"] if after else []), *(["--match", match] if match else [])]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(
        [sys.executable, str(HARNESS), target, str(nth), *options, "--", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == -signal.SIGKILL, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    return proc.stderr


def kit(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return result.stdout


def kit_error(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    return line


def runs_of(experiment: str, role: str, status: str | None = None) -> list:
    return tracking.find_runs(experiment, tags={"kit.role": role}, status=status)


def epochs_logged(run_id: str) -> list[int]:
    client = tracking.configure().MlflowClient()
    return sorted(m.step for m in client.get_metric_history(run_id, "epoch_time"))


@pytest.fixture
def with_data(project, synthetic_src) -> Path:
    install_dataset(synthetic_src, project)
    return project


# --------------------------------------------------------------------------------------------------
# kit train


@pytest.mark.parametrize(
    ("experiment", "nth", "after"),
    [
        # U-Net: killed right after epoch 1's last.pt reached the store, before its numbers were logged
        ("unet_tiny", 2, True),
        # Mask R-CNN: killed as epoch 2's checkpoints start to upload (epoch 1 complete in the store)
        ("maskrcnn_tiny", 3, False),
    ],
)
def test_killed_training_resumes_the_same_runs_to_the_last_epoch(with_data, experiment, nth, after) -> None:
    target = "kit.stages.train:_FoldLogger.checkpoint"
    killed(target, nth, "train", "--exp", experiment, "--folds", "0", *TRAIN_3_EPOCHS, after=after)

    (parent,) = runs_of(experiment, "train", status=None)
    (fold,) = runs_of(experiment, "train-fold", status=None)
    assert parent.info.status == fold.info.status == "RUNNING"
    assert tracking.is_stale(parent) and tracking.status_text(parent) == "RUNNING (stale?)"
    assert "RUNNING (stale?)" in kit("runs")
    assert epochs_logged(fold.info.run_id) == ([] if after else [0])
    # no stage reads the interrupted training
    assert "no finished train run" in kit_error("predict", "--exp", experiment, "--split", "test")

    kit("train", "--exp", experiment, "--resume")

    (parent2,) = runs_of(experiment, "train", status=None)
    (fold2,) = runs_of(experiment, "train-fold", status=None)
    assert (parent2.info.run_id, fold2.info.run_id) == (parent.info.run_id, fold.info.run_id)
    assert parent2.info.status == fold2.info.status == "FINISHED"
    assert epochs_logged(fold.info.run_id) == [0, 1, 2]  # every epoch once: none lost, none twice
    assert fold2.data.params["epochs_run"] == "3"
    assert "RUNNING" not in kit("runs")


def test_resume_never_takes_over_a_live_run(with_data) -> None:
    with tracking.start_run("unet_tiny", "train", tags={"kit.role": "train"}) as run:
        assert tracking.is_live(tracking.configure().get_run(run.info.run_id))
        line = kit_error("train", "--exp", "unet_tiny", "--resume")
    assert f"run {run.info.run_id} is still training: process {os.getpid()}" in line


# --------------------------------------------------------------------------------------------------
# kit predict, kit ensemble, kit submit (on a copy of the session's trained unet_tiny)


def test_killed_predict_is_never_consumed(trained_copy) -> None:
    kit("predict", "--exp", "unet_tiny", "--split", "test")
    (good,) = runs_of("unet_tiny", "predict")
    # killed after every artifact was uploaded, before the run's metrics and status
    killed("mlflow:log_metrics", 1, "predict", "--exp", "unet_tiny", "--split", "test")
    bad = next(r for r in runs_of("unet_tiny", "predict", status=None) if r.info.status != "FINISHED")
    assert tracking.status_text(bad) == "RUNNING (stale?)"

    kit("submit", "--exp", "unet_tiny", "--name", "after_kill")
    (submit,) = runs_of("unet_tiny", "submit")
    assert submit.data.tags["kit.predict_run_id"] == good.info.run_id
    line = kit_error("submit", "--exp", "unet_tiny", "--name", "x", "--predict-run", bad.info.run_id)
    assert f"predict run {bad.info.run_id} is RUNNING (stale?), not finished" in line
    assert not Path("submissions/x.csv").exists()

    kit("predict", "--exp", "unet_tiny", "--split", "test")
    newest = tracking.find_runs("unet_tiny", tags={"kit.role": "predict"})[0]
    assert newest.info.run_id not in (good.info.run_id, bad.info.run_id)


def test_killed_ensemble_is_never_consumed(trained_copy) -> None:
    seeds = ["--set", "postprocess.seed_threshold=0.2", "--set", "postprocess.min_size=4"]  # some instances
    kit("predict", "--exp", "unet_tiny", "--oof", *seeds)
    kit("predict", "--exp", "unet_tiny", "--split", "test", *seeds)
    # killed once the ensemble's out-of-fold predict run is finished, before its test predictions
    killed("kit.stages.ensemble:record_predict_run", 2, "ensemble", *ENSEMBLE)
    (ensemble,) = runs_of("ensemble", "ensemble", status=None)
    assert ensemble.info.status == "RUNNING"
    (orphan,) = runs_of("ensemble", "predict")
    assert orphan.data.tags["kit.predict_kind"] == "oof"  # finished, inside an unfinished ensemble

    set_args = [a for a in ENSEMBLE if a != "--exp" and a != "ensemble"]
    assert "no finished predict run of kind oof" in kit_error(
        "evaluate", "--exp", "ensemble", "--kind", "oof", *set_args
    )
    assert "no finished predict run of kind test" in kit_error(
        "submit", "--exp", "ensemble", "--name", "ens", *set_args
    )
    line = kit_error("evaluate", "--exp", "ensemble", "--predict-run", orphan.info.run_id, *set_args)
    assert f"belongs to ensemble run {ensemble.info.run_id}, which did not finish" in line

    kit("ensemble", *ENSEMBLE)
    kit("submit", "--exp", "ensemble", "--name", "ens", *set_args)
    assert Path("submissions/ens.csv").read_text().startswith("ImageId,EncodedPixels")


def test_killed_submit_leaves_the_previous_file(trained_copy) -> None:
    kit("predict", "--exp", "unet_tiny", "--split", "test")
    target = Path("submissions/a.csv")
    target.parent.mkdir()
    target.write_text("the previous submission\n")
    # killed with the new file written and checked under its temporary name, before the rename
    killed("os:replace", 1, "submit", "--exp", "unet_tiny", "--name", "a", match="submissions/a.csv")
    assert target.read_text() == "the previous submission\n"
    assert runs_of("unet_tiny", "submit") == []

    kit("submit", "--exp", "unet_tiny", "--name", "a")
    assert target.read_text().startswith("ImageId,EncodedPixels\n")


# --------------------------------------------------------------------------------------------------
# kit data import


def _stage(root: Path, n: int) -> Path:
    stage = root / "dsb" / "stage1_train"
    for i in range(n):
        (stage / f"img{i}" / "images").mkdir(parents=True, exist_ok=True)
        (stage / f"img{i}" / "masks").mkdir(exist_ok=True)
        (stage / f"img{i}" / "images" / f"img{i}.png").write_bytes((CORPUS / "images/ok.png").read_bytes())
        (stage / f"img{i}" / "masks" / "a.png").write_bytes((CORPUS / "masks/a.png").read_bytes())
    return stage


def test_killed_import_leaves_the_previous_dataset(project) -> None:
    stage = _stage(project, 3)
    kit("data", "import", "dsb2018", str(stage), "--k", "2")
    manifest = project / "data" / "dsb2018" / "manifest.csv"
    before = sha256(manifest)
    _stage(project, 4)
    # killed with the new dataset complete in its temporary folder, before it takes the dataset's place
    killed("kit.data.layout:_swap_into_place", 1, "data", "import", "dsb2018", str(stage), "--k", "2")
    assert sha256(manifest) == before  # the previous dataset, whole
    (leftover,) = [p for p in (project / "data").iterdir() if p.name != "dsb2018"]
    assert leftover.name.startswith(".dsb2018.tmp-")
    assert "dsb2018" in kit("data", "summary")  # the hidden leftover is not a second dataset

    kit("data", "import", "dsb2018", str(stage), "--k", "2")
    assert len(manifest.read_text().splitlines()) == 5
    assert [p.name for p in (project / "data").iterdir()] == ["dsb2018"]  # the leftover is gone


def test_the_next_import_puts_back_a_dataset_moved_aside_by_a_killed_one(project) -> None:
    """A kill between the two renames of `_swap_into_place` (old dataset aside, new not yet in): the
    state such a kill leaves, made by hand with the pid of a process that has ended."""
    stage = _stage(project, 3)
    kit("data", "import", "dsb2018", str(stage), "--k", "2")
    data = project / "data"
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    pid = int(ended.stdout)
    os.replace(data / "dsb2018", data / f".dsb2018.old-{pid}-0a1b2c3d")
    (data / f".dsb2018.tmp-{pid}-half").mkdir()  # and the new one, half-written

    from kit.data.layout import remove_abandoned

    assert remove_abandoned(data / "dsb2018") == [data / f".dsb2018.tmp-{pid}-half"]
    assert sorted(p.name for p in data.iterdir()) == ["dsb2018"]
    assert len((data / "dsb2018" / "manifest.csv").read_text().splitlines()) == 4
