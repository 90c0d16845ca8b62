"""Plots and overlays of kit.metrics write real PNGs with the promised colours."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kit.fileio import read_image
from kit.metrics import THRESHOLDS, evaluate, plot_ap_curves, plot_error_bars, save_overlay, tp_fp_fn_overlay
from kit.metrics.overlay import FN_COLOR, FP_COLOR, TP_COLOR

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    assert path.stat().st_size > 0
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_plot_ap_curves(tmp_path: Path) -> None:
    curves = {
        "unet": {f"{t:.2f}": 0.9 - (t - 0.5) for t in THRESHOLDS},
        "fpn": [0.8 - (t - 0.5) * 1.2 for t in THRESHOLDS],
    }
    out = plot_ap_curves(curves, tmp_path / "plots" / "ap.png", title="val")
    assert out == tmp_path / "plots" / "ap.png"
    assert_png(out)
    assert not [p for p in out.parent.iterdir() if p.name != "ap.png"]  # no temporary files left


def test_plot_ap_curves_rejects_bad_curves(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="3 values"):
        plot_ap_curves({"short": [0.1, 0.2, 0.3]}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="at least one"):
        plot_ap_curves({}, tmp_path / "x.png")


def test_plot_error_bars(tmp_path: Path) -> None:
    truth = np.zeros((30, 60), np.int32)
    truth[2:12, 2:12], truth[2:12, 12:22], truth[15:28, 30:55] = 1, 2, 3
    pred = np.zeros_like(truth)
    pred[2:12, 2:22], pred[15:28, 30:42], pred[15:28, 42:55] = 1, 2, 3  # a merge and a split
    summary = evaluate([("a", truth, pred)], n_bootstrap=10).summary
    assert (summary["merges"], summary["splits"]) == (1, 1)
    assert_png(plot_error_bars(summary, tmp_path / "errors.png", title="val"))
    with pytest.raises(ValueError, match="merges"):
        plot_error_bars({"missed_0.7": summary["missed_0.7"]}, tmp_path / "bad.png")


@pytest.fixture
def scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grey image with a found nucleus (TP), a missed one (FN) and a false detection (FP)."""
    image = np.full((40, 60), 100, np.uint16)
    image[::2] = 200  # not flat, so display_rgb keeps a grey range
    truth = np.zeros((40, 60), np.int32)
    truth[5:15, 5:15] = 3  # found
    truth[5:15, 30:40] = 8  # missed
    pred = np.zeros_like(truth)
    pred[5:15, 6:15] = 11  # IoU 0.9 with truth 3
    pred[25:35, 45:55] = 12  # extra
    return image, truth, pred


def colour_mask(rgb: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
    return np.all(rgb == color, axis=2)


def test_overlay_colours(scene) -> None:
    image, truth, pred = scene
    rgb = tp_fp_fn_overlay(image, truth, pred)
    assert rgb.shape == (40, 60, 3) and rgb.dtype == np.uint8
    green, red, blue = (colour_mask(rgb, c) for c in (TP_COLOR, FP_COLOR, FN_COLOR))
    assert green[5, 10] and green[14, 6] and not green[10, 10]  # contour of the TP, interior untouched
    assert red[25, 50] and red[30, 54] and not red[30, 50]
    assert blue[5, 35] and blue[10, 30] and not blue[10, 35]
    assert green.any() and not green[20:].any()
    assert not (red[:20].any() or blue[20:].any())
    # At IoU > 0.9 the 0.9 match fails: the prediction turns red and its truth blue.
    strict = tp_fp_fn_overlay(image, truth, pred, iou_threshold=0.9)
    assert not colour_mask(strict, TP_COLOR).any()
    assert colour_mask(strict, FP_COLOR)[5, 10] and colour_mask(strict, FN_COLOR)[10, 5]


def test_overlay_on_rgb_image_and_checks(scene) -> None:
    image, truth, pred = scene
    rgb_image = np.stack([image, image // 2, image], axis=2).astype(np.float32)
    assert tp_fp_fn_overlay(rgb_image, truth, pred).shape == (40, 60, 3)
    with pytest.raises(ValueError, match=r"\[0.5, 1\)"):
        tp_fp_fn_overlay(image, truth, pred, iou_threshold=0.3)
    with pytest.raises(ValueError, match="share H×W"):
        tp_fp_fn_overlay(image[:, :50], truth, pred)


def test_save_overlay(tmp_path: Path, scene) -> None:
    image, truth, pred = scene
    out = save_overlay(tmp_path / "overlay.png", image, truth, pred)
    assert_png(out)
    np.testing.assert_array_equal(read_image(out), tp_fp_fn_overlay(image, truth, pred))
