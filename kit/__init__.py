"""kit: nuclei instance segmentation from raw images to a scored submission, tracked in MLflow.

Use a trained model from Python::

    import kit
    model = kit.load_segmenter("models:/nuclei/1")   # or a run id, an experiment, a checkpoint file
    labels = model.predict(image)                     # int32 H×W, 0 = background
    labels = model.predict(image, thresholds={"seed_threshold": 0.6})   # override a stored threshold

The names below are imported on first use, so `import kit` stays light.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "SegmentationModel": "kit.inference.contract",
    "Segmentation": "kit.inference.contract",
    "Segmenter": "kit.inference.segmenter",
    "EnsembleSegmenter": "kit.ensemble.segmenter",
    "WatershedThresholds": "kit.config",
    "DetectionThresholds": "kit.config",
    "SelectionThresholds": "kit.config",
    "load_segmenter": "kit.hub.load",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'kit' has no attribute {name!r}")
