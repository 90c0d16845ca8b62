"""The data stage as library calls: import or generate a dataset, and look at its styles, each an MLflow
run in experiment `datasets` with the manifest as its dataset input (the digest versions the data).

`import_dataset` runs an importer (`kit.data.dsb2018`, `kit.data.mnfinder`, `kit.data.synthetic`) that
writes the DSB layout + manifest, then logs the run, so `kit data import`, `kit demo` and a Python caller
record the same thing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from kit import tracking
from kit.data.manifest import read_manifest
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
