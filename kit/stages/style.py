"""`kit style fit` and `kit style synth` as library calls, tracked in MLflow experiment "style".

- `fit_styles`: one run per style cluster (tags ``kit.role=style-fit``, ``kit.style``, the dataset's
  digest). It trains a pix2pix generator on the cluster's annotated images of the chosen splits and logs
  the losses as metrics, sample grids (condition | real | generated) under ``samples/``, the generator
  under ``checkpoints/generator.pt``, the label images it learnt from in ``layouts.npz`` and their ids
  in ``fit_ids.txt``. Instead of the truth, `labels` may supply pseudo-labels (a model's predictions,
  as nucleAIzer did for test styles without annotations).
- `synthesize_dataset`: for each cluster, the newest finished fit run on this exact dataset version
  renders `n` images from layouts made of that fit's label images; all are written as one dataset (DSB
  layout + manifest, ``kind: style-synthetic`` in dataset.json, ``style-synthetic`` in each image's
  note), which training configs mix in with ``data.extra``. The synth run logs the new dataset and a
  preview.

Defaults fit on the train split's truth only: generators never see validation or test truth unless asked.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from kit import tracking
from kit.data.dataset import NucleiDataset
from kit.data.layout import write_dataset
from kit.data.normalize import normalize_image
from kit.data.sample import SPLITS
from kit.errors import ConfigError, DataError, RunNotFoundError
from kit.tracking.schema import STYLE_EXPERIMENT, Role, Tag, find_role_runs, role_tags
from kit.visualize import contour_overlay, save_png

if TYPE_CHECKING:
    from kit.style.pix2pix import Pix2PixConfig

log = logging.getLogger(__name__)

GENERATOR_PATH = "checkpoints/generator.pt"
LAYOUTS_PATH = "layouts.npz"
_PREVIEW_PAIRS = 4


@dataclass
class FitOutcome:
    style: int
    run_id: str
    n_images: int
    final_losses: dict[str, float]


@dataclass
class SynthOutcome:
    out: Path
    run_id: str
    generator_runs: dict[int, str]
    n_images: int


def labelled_rows(
    dataset: NucleiDataset, splits: Sequence[str], labels: Mapping[str, np.ndarray] | None
) -> pd.DataFrame:
    """Manifest rows of `splits` with labels: the truth, or an entry in `labels` when given."""
    manifest = dataset.manifest
    known = manifest["n_nuclei"].notna() if labels is None else manifest["id"].isin(list(labels))
    return manifest[manifest["split"].isin(list(splits)) & known]


def style_ids(
    dataset: NucleiDataset, style: int, splits: Sequence[str], labels: Mapping[str, np.ndarray] | None = None
) -> list[str]:
    """Labelled images of `style` in `splits` (see `labelled_rows`); `DataError` when there are none."""
    rows = labelled_rows(dataset, splits, labels)
    ids = rows.loc[rows["style"] == style, "id"].tolist()
    if not ids:
        what = "annotated image" if labels is None else "image with pseudo-labels"
        raise DataError(
            f"{dataset.root}: style {style} has no {what} in split(s) {', '.join(splits)}; pix2pix learns "
            "from (mask, image) pairs (see `kit data styles`; pass --splits, or --pseudo-labels EXP)"
        )
    return ids


def style_channels(dataset: NucleiDataset, ids: Sequence[str]) -> int:
    """3 when any of the images has colour channels, else 1."""
    channels = dataset.manifest.set_index("id").loc[list(ids), "channels"]
    return 3 if (channels >= 3).any() else 1


def fit_styles(
    dataset: NucleiDataset,
    *,
    styles: Sequence[int] | None = None,
    splits: Sequence[str] = ("train",),
    config: dict | None = None,
    seed: int = 0,
    labels: Mapping[str, np.ndarray] | None = None,
    labels_source: str = "truth",
) -> list[FitOutcome]:
    """Fit one pix2pix generator per style (default: every style with labelled images in `splits`).

    `config` holds `kit.style.pix2pix.Pix2PixConfig` fields (``channels`` is set from the images).
    `labels` (image id → label image) replaces the truth, e.g. predictions of a model on unannotated test
    images; `labels_source` says where they came from (logged with the run).
    """
    import torch

    from kit.style.pix2pix import Pix2PixConfig

    _check_splits(splits)
    if styles is None:
        rows = labelled_rows(dataset, splits, labels)
        styles = sorted(int(s) for s in rows["style"].unique() if s >= 0)
    if not styles:
        raise DataError(
            f"{dataset.root}: no style cluster has labelled images in split(s) {', '.join(splits)} "
            "(no clusters yet? run `kit data folds`)"
        )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    outcomes = []
    for style in styles:
        ids = style_ids(dataset, style, splits, labels)
        try:
            cfg = Pix2PixConfig(**{**(config or {}), "channels": style_channels(dataset, ids)})
        except TypeError as error:
            raise ConfigError(f"pix2pix config: {error}") from None
        masks = {i: np.asarray(dataset.load(i).labels if labels is None else labels[i]) for i in ids}
        outcomes.append(_fit_one(dataset, style, masks, splits, labels_source, cfg, seed, device))
    return outcomes


def _fit_one(
    dataset: NucleiDataset,
    style: int,
    masks: dict[str, np.ndarray],
    splits: Sequence[str],
    labels_source: str,
    cfg: Pix2PixConfig,
    seed: int,
    device: str,
) -> FitOutcome:
    import mlflow

    from kit.style.pix2pix import sample_grid, save_generator, train_pix2pix

    ids = list(masks)
    pairs = [(normalize_image(dataset.load(i).image, cfg.channels), masks[i]) for i in ids]
    preview = _preview_pairs(pairs, cfg.crop, seed)
    tags = role_tags(Role.STYLE_FIT, **{Tag.STYLE: str(style), Tag.LABELS_SOURCE: labels_source})
    with (
        tracking.start_run(
            STYLE_EXPERIMENT, "style fit", run_name=f"{dataset.name}-style{style}", tags=tags
        ) as run,
        tempfile.TemporaryDirectory(prefix="kit-style-") as tmp,
    ):
        tracking.log_dataset(dataset.root / "manifest.csv", name=dataset.name, context="style-fit")
        mlflow.log_params(
            {**asdict(cfg), "style": style, "splits": ",".join(splits), "n_images": len(ids), "seed": seed}
        )
        mlflow.log_text("\n".join(ids), "fit_ids.txt")
        np.savez_compressed(Path(tmp) / LAYOUTS_PATH, **masks)
        mlflow.log_artifact(str(Path(tmp) / LAYOUTS_PATH))

        def on_log(step: int, losses: dict[str, float]) -> None:
            mlflow.log_metrics(losses, step=step)

        def on_sample(step: int, generator) -> None:
            grid = sample_grid(generator, preview, Path(tmp) / f"step_{step:06d}.png")
            mlflow.log_artifact(str(grid), "samples")

        result = train_pix2pix(pairs, cfg, seed=seed, device=device, on_log=on_log, on_sample=on_sample)
        path = save_generator(
            result.generator.cpu(),
            cfg,
            Path(tmp) / "generator.pt",
            style=style,
            dataset=dataset.name,
            dataset_digest=dataset.digest,
            labels_source=labels_source,
        )
        mlflow.log_artifact(str(path), str(Path(GENERATOR_PATH).parent))
    final = {k: v for k, v in result.history[-1].items() if k != "step"}
    log.info("style %d: fit on %d image(s), run %s", style, len(ids), run.info.run_id)
    return FitOutcome(style, run.info.run_id, len(ids), final)


def _preview_pairs(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]], crop: int, seed: int, tries: int = 8
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Fixed crops shown in every sample grid, so grids of successive steps compare: per pair, the
    random crop (of `tries`) holding the most nucleus pixels."""
    from kit.data.torch_dataset import random_crop

    rng = np.random.default_rng(seed + 1)
    picks = [pairs[i % len(pairs)] for i in range(_PREVIEW_PAIRS)]
    crops = [[random_crop(image, labels, crop, rng) for _ in range(tries)] for image, labels in picks]
    return [max(options, key=lambda pair: np.count_nonzero(pair[1])) for options in crops]


def synthesize_dataset(
    dataset: NucleiDataset,
    out: str | Path,
    *,
    n: int,
    styles: Sequence[int] | None = None,
    size: int = 256,
    seed: int = 0,
) -> SynthOutcome:
    """Render `n` images of `size`² per style with its newest generator fit on this dataset version,
    write them as a dataset at `out` and log a synth run (see module doc)."""
    import mlflow

    from kit.style.layouts import LayoutSampler
    from kit.style.pix2pix import load_generator
    from kit.style.synth import synthesize_samples

    if n < 1 or size < 16:
        raise ConfigError(f"style synth needs n >= 1 and size >= 16, got n={n}, size={size}")
    out = Path(out)
    runs = _generator_runs(dataset, styles)
    rng = np.random.default_rng(seed)
    samples = []
    with tempfile.TemporaryDirectory(prefix="kit-style-synth-") as tmp:
        for style, run_id in runs.items():
            folder = Path(tmp) / run_id
            path = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=GENERATOR_PATH, dst_path=str(folder)
            )
            generator, _ = load_generator(path)
            masks = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=LAYOUTS_PATH, dst_path=str(folder)
            )
            with np.load(masks) as stored:
                layouts = LayoutSampler([stored[key] for key in stored.files])
            source = f"pix2pix(style={style}, run={run_id})"
            samples += synthesize_samples(
                generator, layouts, n, size=(size, size), rng=rng, style=style, source=source
            )
    notes = [f"style {style}: pix2pix generator of MLflow run {run_id}" for style, run_id in runs.items()]
    command = f"kit style synth --data {dataset.root} --n {n} --size {size} --seed {seed}"
    write_dataset(
        samples,
        out,
        name=out.name,
        kind="style-synthetic",
        source=command,
        notes=notes,
        k_folds=None,
        seed=seed,
    )
    tags = role_tags(Role.STYLE_SYNTH, **{Tag.STYLES: ",".join(map(str, runs))})
    with (
        tracking.start_run(STYLE_EXPERIMENT, "style synth", run_name=out.name, tags=tags) as run,
        tempfile.TemporaryDirectory(prefix="kit-style-synth-") as tmp,
    ):
        tracking.log_dataset(dataset.root / "manifest.csv", name=dataset.name, context="layouts")
        tracking.log_dataset(out / "manifest.csv", name=out.name, context="synthesised")
        mlflow.log_params({"n_per_style": n, "size": size, "seed": seed, "out": str(out.resolve())})
        mlflow.log_params({f"generator_run.style{style}": run_id for style, run_id in runs.items()})
        preview = np.concatenate(
            [contour_overlay(s.image, s.labels) for s in samples[:: max(1, len(samples) // 6)][:6]], axis=1
        )
        mlflow.log_artifact(str(save_png(Path(tmp) / "synth_preview.png", preview)))
    return SynthOutcome(out, run.info.run_id, runs, len(samples))


def _generator_runs(dataset: NucleiDataset, styles: Sequence[int] | None) -> dict[int, str]:
    """Style → run id of the newest finished fit on this dataset version."""
    runs: dict[int, str] = {}
    for run in find_role_runs(STYLE_EXPERIMENT, Role.STYLE_FIT, **{Tag.DATASET_DIGEST: dataset.digest}):
        runs.setdefault(int(run.data.tags[Tag.STYLE]), run.info.run_id)
    wanted = sorted(runs) if styles is None else list(styles)
    missing = [s for s in wanted if s not in runs]
    if missing or not wanted:
        raise RunNotFoundError(
            f"no finished `kit style fit` run for style(s) {missing or 'any'} of {dataset.root} (this manifest "
            f"version) in {tracking.tracking_uri()}; run `kit style fit --data {dataset.root}` first"
        )
    return {s: runs[s] for s in wanted}


def _check_splits(splits: Sequence[str]) -> None:
    bad = [s for s in splits if s not in SPLITS]
    if bad or not splits:
        raise ConfigError(f"unknown split {bad[0] if bad else splits!r}; choose from {', '.join(SPLITS)}")


def pseudo_labels_of(experiment: str) -> tuple[dict[str, np.ndarray], str]:
    """(image id → label image, description) of the newest predict run of `experiment`, any kind: labels
    to learn styles from where there is no truth."""
    from kit.config import PREDICT_KINDS
    from kit.inference.artifacts import read_predicted_labels
    from kit.tracking.schema import find_predict_run, run_folder

    run = find_predict_run(experiment, kinds=PREDICT_KINDS)
    return read_predicted_labels(run_folder(run))[1], f"predict run {run.info.run_id}"
