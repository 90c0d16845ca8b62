"""Helpers shared by CLI commands: option types, dataset location, printing tables."""

from __future__ import annotations

from collections.abc import Collection
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from kit.errors import DataError

console = Console()


def choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    """A str Enum of `values` (a choice list of `kit.config`), so Typer validates and lists them."""
    return Enum(name, {v: v for v in values}, type=str)


DATA_DIR = Path("data")

DataOption = Annotated[
    Path | None,
    typer.Option(
        "--data",
        "-d",
        help="Dataset folder (holding manifest.csv). Default: the only dataset under ./data/.",
        file_okay=False,
    ),
]
OverridesOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config value: section.key=value (repeatable)."),
]


def resolve_dataset_dir(data: Path | None) -> Path:
    """The dataset folder to use: `data` if given, else the single dataset under ./data/."""
    if data is not None:
        if not (data / "manifest.csv").is_file():
            raise DataError(f"{data}: not a kit dataset (no manifest.csv); create one with `kit data import`")
        return data
    found = sorted(
        p.parent for p in DATA_DIR.glob("*/manifest.csv") if not p.parent.name.startswith(".")
    )  # hidden: a dataset being written, or left by a killed import
    if len(found) == 1:
        return found[0]
    if not found:
        raise DataError("no dataset under ./data/; run `kit data import ...` or `kit data synth` first")
    names = ", ".join(str(p) for p in found)
    raise DataError(f"several datasets under ./data/ ({names}); choose one with --data")


def frame_table(
    frame,
    title: str | None = None,
    float_format: str = "{:.3f}",
    whole: Collection[str] = (),
    compact: bool = False,
) -> Table:
    """A pandas DataFrame as a rich table; the columns named in `whole` are never wrapped; `compact`
    draws only the header rule, to fit more columns in a terminal."""
    table = Table(
        title=title,
        show_lines=False,
        header_style="bold",
        box=box.SIMPLE_HEAD if compact else box.HEAVY_HEAD,
        pad_edge=not compact,
        collapse_padding=compact,
    )
    for col in frame.columns:
        justify = "right" if frame[col].dtype.kind in "iuf" else "left"
        table.add_column(str(col), justify=justify, no_wrap=col in whole)
    for row in frame.itertuples(index=False):
        table.add_row(*[float_format.format(v) if isinstance(v, float) else str(v) for v in row])
    return table


def print_frame(frame, title: str | None = None, float_format: str = "{:.3f}") -> None:
    """Print a pandas DataFrame as a rich table."""
    console.print(frame_table(frame, title, float_format))


def print_summary(summary: dict, title: str) -> None:
    """Print the headline numbers of an evaluation summary as a rich table."""
    table = Table(title=title, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    lo, hi = summary["map_ci95"] or (float("nan"), float("nan"))
    rows = [
        ("images", f"{summary['n_images']}"),
        ("nuclei true / predicted", f"{summary['n_true']} / {summary['n_pred']}"),
        ("DSB mAP@[.5:.95]", f"[bold]{summary['map']:.4f}[/]  (95% CI {lo:.3f}–{hi:.3f})"),
        (
            "AP@0.5 / AP@0.75",
            f"{summary['ap_per_threshold']['0.50']:.3f} / {summary['ap_per_threshold']['0.75']:.3f}",
        ),
        ("average F1 (0.50–0.90)", f"{summary['f1_avg']:.4f}"),
        ("precision / recall @0.5", f"{summary['precision_0.5']:.3f} / {summary['recall_0.5']:.3f}"),
        ("precision / recall @0.7", f"{summary['precision_0.7']:.3f} / {summary['recall_0.7']:.3f}"),
        ("missed @0.7 tiny/small/normal/large", " / ".join(str(v) for v in summary["missed_0.7"].values())),
        ("extra @0.7", f"{summary['extra_0.7']}"),
        ("merges / splits", f"{summary['merges']} / {summary['splits']}"),
        ("pixel Dice", f"{summary['dice']:.4f}"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
