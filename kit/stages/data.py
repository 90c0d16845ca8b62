"""The data stage as library calls: import or generate a dataset, and look at its styles, each an MLflow
run in experiment `datasets` with the manifest as its dataset input (the digest versions the data).

`import_dataset` runs an importer (`kit.data.dsb2018`, `kit.data.mnfinder`, `kit.data.synthetic`) that
writes the DSB layout + manifest, then logs the run, so `kit data import`, `kit demo` and a Python caller
record the same thing. `autolabel_dataset` writes a dataset whose labels a model made
(`kit.inference.autolabel`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from kit import tracking
from kit.data.manifest import read_manifest
from kit.errors import DataError
from kit.tracking.schema import DATASETS_EXPERIMENT, Role, Tag, role_tags


@dataclass
class ImportOutcome:
    """A written dataset: its folder, manifest, seconds taken, MLflow run and the remarks the user should
    read (fewer folds than asked, images taken as the test split), one line each."""

    root: Path
    manifest: pd.DataFrame
    seconds: float
    run_id: str
    remarks: list[str] = field(default_factory=list)


def import_dataset(
    kind: str, out: Path, write: Callable[[], object], *, command: str = "data import"
) -> ImportOutcome:
    """Run `write` (an importer writing the dataset to `out`) and log the import as an MLflow run."""
    import mlflow

    started = time.perf_counter()
    write()
    manifest = read_manifest(out / "manifest.csv")
    elapsed = time.perf_counter() - started
    with tracking.start_run(
        DATASETS_EXPERIMENT, f"{command} {kind}", run_name=out.name, tags=role_tags(Role.IMPORT)
    ) as run:
        tracking.log_dataset(out / "manifest.csv", name=out.name, context="import")
        mlflow.log_params({"kind": kind, "path": str(out.resolve()), "n_images": len(manifest)})
        mlflow.log_metrics(
            {"import_seconds": elapsed, "n_nuclei": float(manifest["n_nuclei"].fillna(0).sum())}
        )
        mlflow.log_artifact(str(out / "manifest.csv"))
        if (out / "dataset.json").is_file():
            mlflow.log_artifact(str(out / "dataset.json"))
    info_file = out / "dataset.json"
    remarks = json.loads(info_file.read_text()).get("remarks", []) if info_file.is_file() else []
    return ImportOutcome(out, manifest, elapsed, run.info.run_id, remarks)


def import_dsb2018(path: Path, out: Path, **kwargs) -> ImportOutcome:
    """`kit.data.dsb2018.import_dsb2018` (kwargs passed on) as a tracked import."""
    from kit.data.dsb2018 import import_dsb2018 as write

    return import_dataset("dsb2018", out, lambda: write(path, out, **kwargs))


def import_mnfinder(out: Path, **kwargs) -> ImportOutcome:
    """`kit.data.mnfinder.import_mnfinder` (kwargs passed on) as a tracked import."""
    from kit.data.mnfinder import import_mnfinder as write

    return import_dataset("mnfinder", out, lambda: write(out, **kwargs))


def synthesize(
    out: Path, n: int, seed: int = 0, *, size: int | None = None, k_folds: int = 4, progress: bool = True
) -> ImportOutcome:
    """A synthetic dataset of `n` images with exact truth (`kit.data.synthetic`) as a tracked import."""
    from kit.data.layout import write_dataset
    from kit.data.synthetic import generate_synthetic

    def write() -> None:
        samples = generate_synthetic(n, seed, size=(size, size) if size else None)
        write_dataset(
            samples,
            out,
            name=out.name,
            kind="synthetic",
            source=f"kit data synth --n {n} --seed {seed}",
            notes=[],
            k_folds=k_folds,
            seed=seed,
            progress=progress,
        )

    return import_dataset("synthetic", out, write)


@dataclass
class StylesOutcome:
    """The style report of a dataset: the table, the mosaic and table files, the MLflow run."""

    table: pd.DataFrame
    mosaic: Path
    csv: Path
    run_id: str


def styles_report(root: Path, out: Path | None = None, per_style: int = 6) -> StylesOutcome:
    """A PNG mosaic of a few images per style cluster and a table of cluster sizes per split (flagging test
    styles rare in training), written to `out` (default outputs/styles/<name>.png) and logged."""
    import mlflow

    from kit.data.dataset import NucleiDataset
    from kit.style.report import style_mosaic, styles_table

    dataset = NucleiDataset(root)
    table = styles_table(dataset.manifest)
    out = out or Path("outputs") / "styles" / f"{dataset.name}.png"
    mosaic = style_mosaic(dataset, out, per_style=per_style)
    csv = out.with_suffix(".csv")
    table.to_csv(csv, index=False)
    with tracking.start_run(
        DATASETS_EXPERIMENT,
        "data styles",
        run_name=f"{dataset.name}-styles",
        tags=role_tags(Role.STYLES, **{Tag.DATASET: dataset.name}),
    ) as run:
        tracking.log_dataset(dataset.root / "manifest.csv", name=dataset.name, context="styles")
        mlflow.log_artifact(str(mosaic))
        mlflow.log_artifact(str(csv))
    return StylesOutcome(table, mosaic, csv, run.info.run_id)


@dataclass
class AutolabelOutcome:
    """A dataset with automatic labels: its folder, manifest, per-image records (`RECORD_COLUMNS`), the
    agreement of the automatic labels with the drawn ones (mean DSB score, NaN without any), the run."""

    root: Path
    manifest: pd.DataFrame
    records: pd.DataFrame
    agreement: float
    run_id: str


def autolabel_dataset(
    model_source: str,
    out: Path,
    *,
    data_root: Path | None = None,
    input_dir: Path | None = None,
    splits: Sequence[str] = ("train",),
    label_channel: int | None = None,
    image_channels: Sequence[int] | None = None,
    min_score: float | None = None,
    k_folds: int = 4,
    seed: int = 0,
    device: str | None = None,
    progress: bool = True,
    command: str = "data autolabel",
) -> AutolabelOutcome:
    """Write at `out` a dataset whose labels the model `model_source` made (anything `kit.load_segmenter`
    takes, e.g. an experiment, a run, a model URI, or `classical` untrained) and log it as an autolabel
    run in experiment `datasets`.

    From a dataset (`data_root`): the images of `splits` get automatic labels; the other splits are copied
    with their own truth, so a model trained on the automatic labels is scored on drawn ones. From a folder
    of unlabelled images (`input_dir`): every image gets automatic labels, in the train split. Images whose
    confidence is under `min_score` are left out. Styles and `k_folds` folds are assigned afresh.
    """
    from dataclasses import replace

    import mlflow

    from kit.data.dataset import NucleiDataset
    from kit.data.layout import write_dataset
    from kit.data.sample import SPLITS, Sample
    from kit.errors import ConfigError
    from kit.fileio import read_image
    from kit.hub import load_segmenter
    from kit.inference.autolabel import autolabel, select_channels
    from kit.inference.inputs import folder_images

    if (data_root is None) == (input_dir is None):
        raise ConfigError("give one of --data ROOT and --input DIR to autolabel")
    unknown = [s for s in splits if s not in SPLITS]
    if unknown or not splits:
        raise ConfigError(
            f"--splits: unknown split(s) {unknown or list(splits)}; choose from {', '.join(SPLITS)}"
        )
    model = load_segmenter(model_source, device=device)
    copied: list[Sample] = []
    if data_root is not None:
        dataset = NucleiDataset(data_root)
        wanted = [i for s in splits for i in dataset.ids(s)]
        if not wanted:
            raise DataError(f"{dataset.root}: no image in split(s) {', '.join(splits)} to label")
        to_label = (dataset.load(i) for i in wanted)
        copied = [dataset.load(i) for i in dataset.ids() if dataset.row(i)["split"] not in splits]
        origin = str(dataset.root)
    else:
        to_label = (
            Sample(im.id, read_image(im.path), None, split="train", source=str(im.path))
            for im in folder_images(input_dir)
        )
        origin = str(input_dir)
    source = f"{model_source} ({type(model).__name__})"
    result = autolabel(
        model,
        to_label,
        source=source,
        label_channel=label_channel,
        image_channels=image_channels,
        min_score=min_score,
        progress=progress,
    )
    if not result.samples:
        raise DataError(
            f"no image of {origin} kept its automatic labels (min score {min_score}); lower --min-score"
        )
    copies = [
        replace(s, image=select_channels(np.asarray(s.image), image_channels, s.source)) for s in copied
    ]
    args = f"--from {model_source}" + (f" --channel {label_channel}" if label_channel is not None else "")
    write_dataset(
        [*result.samples, *copies],
        out,
        name=out.name,
        kind="autolabel",
        source=f"kit {command} {args} ({origin})",
        notes=[f"labels of split(s) {', '.join(splits) if data_root else 'train'} made by {source}"],
        k_folds=k_folds,
        seed=seed,
        progress=progress,
    )
    manifest = read_manifest(out / "manifest.csv")
    with tracking.start_run(
        DATASETS_EXPERIMENT,
        command,
        run_name=out.name,
        tags=role_tags(Role.AUTOLABEL, **{Tag.LABELS_SOURCE: model_source[:250]}),
    ) as run:
        tracking.log_dataset(out / "manifest.csv", name=out.name, context="autolabel")
        mlflow.log_params(
            {
                "model": model_source[:500],
                "origin": origin[:500],
                "splits": ",".join(splits),
                "label_channel": "all" if label_channel is None else label_channel,
                "image_channels": "all" if image_channels is None else ",".join(map(str, image_channels)),
                "min_score": min_score,
            }
        )
        records = result.records
        metrics = {"n_labelled": float(records["kept"].sum()), "n_dropped": float((~records["kept"]).sum())}
        if np.isfinite(result.agreement):
            metrics["agreement_map"] = result.agreement
        mlflow.log_metrics(metrics)
        mlflow.log_text(records.to_csv(index=False), "autolabel.csv")
        mlflow.log_artifact(str(out / "manifest.csv"))
        mlflow.log_artifact(str(out / "dataset.json"))
    return AutolabelOutcome(out, manifest, records, result.agreement, run.info.run_id)
