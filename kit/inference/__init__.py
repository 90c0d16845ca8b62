"""Inference building blocks: TTA, tiled prediction with blending, post-processing to label images."""

from kit.inference.postprocess import instances_from_probs
from kit.inference.tiling import model_predictor, predict_tiled
from kit.inference.tta import TRANSFORMS, d4_forward, d4_inverse, predict_tta
from kit.models.activation import probabilities

__all__ = [
    "TRANSFORMS",
    "d4_forward",
    "d4_inverse",
    "instances_from_probs",
    "model_predictor",
    "predict_tiled",
    "predict_tta",
    "probabilities",
]
