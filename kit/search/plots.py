"""Pictures of a study: optimisation history, intermediate values (the pruned trials' curves), parameter
importances and parallel coordinates, as PNG files and together in one interactive HTML page."""

from __future__ import annotations

import html
import warnings
from pathlib import Path
from typing import Any

from kit.fileio import atomic_write_text
from kit.visualize import save_figure

HTML_FILE = "study.html"


def _plots(study: Any) -> dict[str, str]:
    """Plot name → Optuna plot function name, for the plots this study has data for."""
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        return {}
    plots = {"optimization_history": "plot_optimization_history"}
    if any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        plots["intermediate_values"] = "plot_intermediate_values"
    varied = {k for t in complete for k in t.params if len({repr(u.params.get(k)) for u in complete}) > 1}
    if len(complete) >= 2 and varied:
        plots["param_importances"] = "plot_param_importances"
    if any(t.params for t in complete):
        plots["parallel_coordinate"] = "plot_parallel_coordinate"
    return plots


def write_study_plots(study: Any, folder: str | Path) -> list[Path]:
    """Write each plot the study has data for as `<name>.png` under `folder`, and all of them in
    `study.html` (plotly, self-contained, so it opens offline); the paths written (none before the
    first complete trial)."""
    import optuna

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    plots = _plots(study)
    written = []
    sections = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # the matplotlib backend
        warnings.filterwarnings("ignore", "Attempting to set identical", UserWarning)  # a one-value axis
        warnings.filterwarnings("ignore", "Target and region quantiles", UserWarning)  # tied values
        for name, function in plots.items():
            ax = getattr(optuna.visualization.matplotlib, function)(study)
            ax = ax[0] if hasattr(ax, "__len__") else ax  # some plots return an array of axes
            figure = ax.figure
            figure.set_size_inches(9, 5.5)
            figure.tight_layout()
            written.append(save_figure(figure, folder / f"{name}.png"))
            interactive = getattr(optuna.visualization, function)(study)
            sections.append(interactive.to_html(full_html=False, include_plotlyjs=not sections))
    if sections:
        title = html.escape(f"study {study.study_name}")
        page = (
            f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title></head>"
            f"<body><h1>{title}</h1>{''.join(sections)}</body></html>"
        )
        written.append(atomic_write_text(folder / HTML_FILE, page))
    return written
