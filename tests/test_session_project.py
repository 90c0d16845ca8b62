"""The session's trained tiny U-Net (conftest `trained_project`) and its copies: a copy is a project of its
own, whose MLflow store reads and writes the copy's artifacts and never the original's."""

from __future__ import annotations

from helpers import copy_trained, project_fingerprint, sha256

from kit import tracking


def test_session_project_holds_one_finished_two_fold_train_run(in_trained_project) -> None:
    outcome = in_trained_project.outcome
    runs = tracking.find_runs("unet_tiny", status=None)
    assert {r.info.run_id for r in runs} == {outcome.parent_run_id, *(f.run_id for f in outcome.folds)}
    assert all(r.info.status == "FINISHED" for r in runs)
    assert [f.fold for f in outcome.folds] == [0, 1] and all(f.epochs_run == 2 for f in outcome.folds)
    root = str(in_trained_project.root.resolve())
    assert all(r.info.artifact_uri.removeprefix("file://").startswith(root) for r in runs)


def test_a_copy_reads_and_writes_its_own_artifacts(trained_project, tmp_path, monkeypatch) -> None:
    original = trained_project.root
    before = project_fingerprint(original)
    copy = copy_trained(trained_project, tmp_path / "copy")
    assert copy.outcome is trained_project.outcome and copy.root == (tmp_path / "copy").resolve()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(copy.root)
    client = tracking.configure().MlflowClient()

    # Same runs (same ids), artifacts found in the copy.
    parent = client.get_run(copy.outcome.parent_run_id)
    assert parent.info.artifact_uri.removeprefix("file://").startswith(str(copy.root))
    fold = copy.outcome.folds[0].run_id
    relative = "checkpoints/best.pt"
    assert sha256(client.download_artifacts(fold, relative, str(tmp_path))) == sha256(
        original / client.get_run(fold).info.artifact_uri.split(str(copy.root) + "/", 1)[1] / relative
    )

    # New artifacts of an old run and of a new run land in the copy only.
    client.log_text(parent.info.run_id, "from the copy", "note.txt")
    new = client.create_run(parent.info.experiment_id)
    client.log_text(new.info.run_id, "new run", "new.txt")
    client.set_terminated(new.info.run_id)
    notes = list(copy.root.rglob("note.txt")) + list(copy.root.rglob("new.txt"))
    assert sorted(p.read_text() for p in notes) == ["from the copy", "new run"]
    assert not list(original.rglob("note.txt")) and not list(original.rglob("new.txt"))
    assert project_fingerprint(original) == before
