"""`kit register` and `kit export`: a trained model in the MLflow Model Registry, or as TorchScript/ONNX."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kit.commands._common import DataOption, console, resolve_dataset_dir

ExpOption = Annotated[
    str, typer.Option("--exp", "-e", help="Experiment whose newest train or ensemble run to use.")
]
RunOption = Annotated[
    str | None, typer.Option("--run", help="A train or ensemble run id instead of the newest.")
]


def register_command(
    exp: ExpOption,
    name: Annotated[str, typer.Option("--name", "-n", help="Registered model name.")],
    run: RunOption = None,
) -> None:
    """Register the MLflow Model of an experiment's newest train (or ensemble) run as a new version."""
    from kit.hub import register

    uri, version = register(exp, name, run)
    console.print(f"registered {uri} as [bold]models:/{name}/{version}[/]")


def export_command(
    exp: ExpOption,
    run: RunOption = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Folder. Default: outputs/export/<exp>/.")
    ] = None,
    formats: Annotated[
        str, typer.Option("--format", help="Comma-separated: torchscript, onnx.")
    ] = "torchscript,onnx",
    data: DataOption = None,
    n_images: Annotated[
        int, typer.Option("--check-images", help="Images of the dataset to check on.", min=1)
    ] = 3,
) -> None:
    """Export a U-Net run's fold networks as TorchScript and ONNX (dynamic H×W) and check them on real images."""
    from kit.data.dataset import NucleiDataset
    from kit.hub import load_segmenter
    from kit.inference.export import export_segmenter

    dataset = NucleiDataset(resolve_dataset_dir(data))
    ids = (dataset.ids("test") or dataset.ids())[:n_images]
    images = [dataset.load(i).image for i in ids]
    out = out or Path("outputs") / "export" / exp
    source = run or exp
    records = export_segmenter(
        load_segmenter(source, device="cpu"),
        out,
        images,
        formats=[f.strip() for f in formats.split(",") if f.strip()],
        source=source,
    )
    for r in records:
        console.print(
            f"{out / r['file']}: {r['format']}, largest |difference| from PyTorch {r['max_abs_diff']:.2e}"
        )
    console.print(f"{out / 'export.json'}: what the files take and return (post-processing is not in them)")
