"""`kit ensemble`: the LightGBM IoU model over the base experiments' instances, as MLflow runs."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import pandas as pd
import typer

from kit.commands._common import OverridesOption, console, print_frame
from kit.commands.train import ExpOption


class ApplyKind(str, Enum):
    test = "test"
    input = "input"
    none = "none"


def ensemble_command(
    exp: ExpOption,
    kind: Annotated[
        ApplyKind | None,
        typer.Option(
            help="Apply to the newest test or input predict runs of the bases, or none to train only "
            "(default: ensemble.apply_kind)."
        ),
    ] = None,
    overrides: OverridesOption = None,
) -> None:
    """Train the IoU model on the bases' out-of-fold instances, select instances, estimate scores (MLflow runs)."""
    from kit.config import load_experiment
    from kit.stages.ensemble import ensemble_experiment

    cfg = load_experiment(exp, overrides or [])
    outcome = ensemble_experiment(cfg, kind=kind.value if kind else None, command=f"ensemble --exp {exp}")
    rows = [
        {"model": name, "OOF mAP": score, "kept share": outcome.kept_share[name]}
        for name, score in outcome.source_maps.items()
    ]
    rows.append({"model": f"{cfg.name} (ensemble)", "OOF mAP": outcome.oof["real_map"], "kept share": ""})
    print_frame(pd.DataFrame(rows), title=f"{outcome.n_images} out-of-fold images", float_format="{:.4f}")
    console.print(
        f"threshold {outcome.threshold:.2f}; estimated OOF mAP {outcome.oof['estimated_map']:.4f} "
        f"(per-image MAE {outcome.oof['estimate_mae']:.3f}, r {outcome.oof['estimate_r']:.2f}); "
        f"{outcome.n_candidates} candidates, {outcome.candidates_ms_per_image:.0f} + "
        f"{outcome.features_ms_per_image:.0f} ms/image for candidates + features"
    )
    if outcome.apply_index is not None:
        index = outcome.apply_index
        console.print(
            f"{outcome.apply_kind}: {len(index)} image(s), {int(index['n_instances'].sum())} instances, "
            f"estimated mAP {index['estimated_score'].mean():.4f}; predict run {outcome.apply_run_id[:8]}"
        )
    console.print(f"MLflow ensemble run {outcome.run_id[:8]}, OOF predict run {outcome.oof_run_id[:8]}")
