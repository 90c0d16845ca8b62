"""Block-wise and distributed prediction with a real (tiny, trained) network: block-wise = whole image,
`kit predict` on a large image (OME-Zarr in the run) and its one-line errors, a local Dask cluster that
loses a worker, and a real `dask scheduler` + two `dask worker` processes on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile
from helpers import predicted_labels
from scale_models import DiesOnceModel, ThresholdModel
from scipy import ndimage as ndi
from test_cli import error_line, kit

from kit.data.synthetic import generate_synthetic
from kit.errors import KitError
from kit.fileio import write_png
from kit.metrics import label_agreement
from kit.scale import BlockSettings, open_executor, predict_blockwise

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def unet(trained_project, tmp_path_factory):
    """(model folder, `kit.Segmenter`) of the session's tiny U-Net (both folds), which finds nuclei."""
    from kit.inference.segmenter import Segmenter

    checkpoints = sorted(trained_project.root.rglob("checkpoints/best.pt"))
    assert len(checkpoints) == 2
    model = Segmenter.from_checkpoints(checkpoints, device="cpu")
    return model.save(tmp_path_factory.mktemp("session-unet") / "model"), model


@pytest.fixture(scope="module")
def mosaic() -> np.ndarray:
    """A 320×384 synthetic fluorescence image with about 80 nuclei, some touching."""
    return generate_synthetic(1, seed=9, size=(320, 384), styles=["fluorescence"])[0].image


def test_blockwise_equals_whole_image_for_a_trained_unet(unet, mosaic):
    from kit.metrics import iou_matrix

    _, model = unet
    whole = model.predict(mosaic)
    halo = 32
    result = model.predict_blocks(mosaic, block=128, halo=halo, context=32, progress=False)
    labels = np.asarray(result.labels[:])
    agreement = label_agreement(whole, labels)
    assert agreement["n_reference"] > 40  # the network finds nuclei: the comparison is not empty
    assert result.blocks == 9 and result.duplicates > 0  # nuclei on the seams were seen twice
    # Every nucleus of the whole image comes out once and whole, except those larger than the halo,
    # which are left out and counted (this tiny model glues some nuclei into blobs of 100+ px).
    assert agreement["n_other"] == agreement["matched"] and agreement["cut"] == agreement["joined"] == 0
    matrix = iou_matrix(whole, labels)
    lost = matrix.truth_ids[~(matrix.iou > 0.5).any(axis=1)]
    boxes = ndi.find_objects(whole)
    assert all(max(s.stop - s.start for s in boxes[i - 1]) > halo for i in lost)
    assert result.too_large == len(lost)
    assert agreement["identical"] >= 0.95 * agreement["matched"] and agreement["mean_matched_iou"] > 0.99
    table = result.table
    assert table["mean_prob"].between(0, 1).all() and len(table) == agreement["n_other"]


def test_kit_predict_on_a_large_image_writes_ome_zarr_into_the_run(unet, mosaic, project):
    from kit.stages.predict import ScaleOptions, predict_with_model
    from kit.tracking.schema import get_run

    folder, model = unet
    (project / "in").mkdir()
    write_png(project / "in" / "big.png", mosaic)
    write_png(project / "in" / "small.png", mosaic[:96, :96])
    outcome = predict_with_model(
        folder, input_dir=project / "in", progress=False, scale=ScaleOptions(block=128, halo=48)
    )
    index = outcome.index.set_index("image_id")
    assert index.loc["big", "labels"] == "labels/big.ome.zarr" and index.loc["big", "probs"] == ""
    assert index.loc["small", "labels"] == "labels/small.png"
    run = get_run(outcome.run_id)
    assert run.data.metrics["blocks"] == 9 + 1 and run.data.metrics["pixels"] == 320 * 384 + 96 * 96
    assert run.data.metrics["workers"] == 1 and run.data.metrics["seconds"] > 0
    assert run.data.metrics["nuclei_too_large"] == 0
    _, labels = predicted_labels(run)
    whole = model.predict(mosaic)
    assert whole.max() > 40
    agreement = label_agreement(whole, labels["big"])
    assert agreement["matched"] == agreement["n_reference"] == agreement["n_other"]
    instances = outcome.instances
    assert (instances["image_id"] == "big").sum() == index.loc["big", "n_instances"] == labels["big"].max()


def test_kit_predict_names_a_bad_zarr_input_in_one_line(unet, project):
    import zarr

    folder, _ = unet
    zarr.open_group(str(project / "nothing.zarr"), mode="w")
    line = error_line(kit("predict", "--model", folder, "--input", project / "nothing.zarr"))
    assert line.startswith(f"error: {project / 'nothing.zarr'}: a Zarr group without OME-Zarr"), line
    zarr.save_array(str(project / "stack.zarr"), np.zeros((4, 8, 40, 40), np.uint8))
    line = error_line(kit("predict", "--model", folder, "--input", project / "stack.zarr"))
    assert line.startswith(f"error: {project / 'stack.zarr'}: expected a 2-D array"), line


@pytest.mark.slow
def test_a_local_cluster_gives_the_in_process_labels_and_survives_a_killed_worker(tmp_path):
    image = generate_synthetic(1, seed=3, size=(300, 410), styles=["fluorescence"])[0].image
    tifffile.imwrite(tmp_path / "in.tif", image.astype(np.uint16) * 200 + 7, tile=(64, 64))
    settings = BlockSettings(64, 40, 0)
    local = predict_blockwise(ThresholdModel(), tmp_path / "in.tif", settings=settings, progress=False)
    expected = np.asarray(local.labels[:])
    assert expected.max() > 100
    marker = tmp_path / "die-once"
    marker.touch()
    with open_executor(workers=2) as executor:
        result = predict_blockwise(
            DiesOnceModel(marker),
            tmp_path / "in.tif",
            tmp_path / "out.ome.zarr",
            settings=settings,
            executor=executor,
            progress=False,
        )
        assert result.workers == 2
        assert not marker.exists() and Path(f"{marker}.used").exists()  # one worker did die mid-run
        np.testing.assert_array_equal(np.asarray(result.labels[:]), expected)
        # A cluster that gives up on a task whose workers keep dying: one KitError, no partial result.
        executor.client.cluster.scheduler.allowed_failures = 0
        marker.touch()
        with pytest.raises(KitError, match=r"the Dask workers running index \d+ died every time"):
            predict_blockwise(
                DiesOnceModel(marker),
                tmp_path / "in.tif",
                tmp_path / "again.ome.zarr",
                settings=settings,
                executor=executor,
                progress=False,
            )
    assert not (tmp_path / "again.ome.zarr").exists()


@pytest.mark.slow
def test_a_real_dask_scheduler_and_two_workers_give_the_local_labels(unet, mosaic, project, tmp_path):
    from kit.stages.predict import ScaleOptions, predict_with_model
    from kit.tracking.schema import get_run

    folder, _ = unet
    (project / "in").mkdir()
    write_png(project / "in" / "big.png", mosaic)
    for k in range(2):
        sample = generate_synthetic(1, seed=20 + k, size=(96, 128), styles=["fluorescence"])[0]
        write_png(project / "in" / f"small{k}.png", sample.image)
    scale = ScaleOptions(block=128, halo=32)
    local = predict_with_model(folder, input_dir=project / "in", progress=False, scale=scale)
    _, expected = predicted_labels(get_run(local.run_id))
    assert expected["big"].max() > 40 and all(expected[f"small{k}"].max() > 0 for k in range(2))

    with dask_cluster(tmp_path, workers=2) as address:
        remote = predict_with_model(
            folder,
            input_dir=project / "in",
            progress=False,
            scale=ScaleOptions(scheduler=address, block=128, halo=32),
        )
    run = get_run(remote.run_id)
    assert run.data.metrics["workers"] == 2 and run.data.params["scheduler"] == address
    _, labels = predicted_labels(run)
    assert sorted(labels) == sorted(expected)
    for image_id, want in expected.items():
        np.testing.assert_array_equal(labels[image_id], want, err_msg=image_id)


@contextlib.contextmanager
def dask_cluster(folder: Path, workers: int) -> Iterator[str]:
    """`dask scheduler` on a free port of 127.0.0.1 (it writes its address to a scheduler file) and
    `workers` × `dask worker` processes of one thread each; yields the address; stops them all."""
    from distributed import Client

    file = folder / "scheduler.json"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]),
        "OMP_NUM_THREADS": "1",
    }
    dask = [sys.executable, "-m", "dask"]
    quiet = {"env": env, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    procs = [
        subprocess.Popen(
            [
                *dask,
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--dashboard-address",
                ":0",
                "--scheduler-file",
                str(file),
            ],
            **quiet,
        )
    ]
    try:
        address = _scheduler_address(file)
        for _ in range(workers):
            procs.append(
                subprocess.Popen(
                    [
                        *dask,
                        "worker",
                        "--host",
                        "127.0.0.1",
                        "--nthreads",
                        "1",
                        "--no-dashboard",
                        "--scheduler-file",
                        str(file),
                    ],
                    **quiet,
                )
            )
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(workers, timeout=120)
        yield address
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _scheduler_address(file: Path) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if file.is_file():
            try:
                return json.loads(file.read_text())["address"]
            except (ValueError, KeyError):
                pass  # still being written
        time.sleep(0.2)
    raise TimeoutError(f"dask scheduler wrote no {file} within 60 s")
