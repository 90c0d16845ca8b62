"""The MLflow pyfunc flavour of a kit model: the model folder as an artifact, `predict` on images.

Loaded by `mlflow.pyfunc.load_model`, this imports kit's inference code only (no training code).
"""

from __future__ import annotations

import warnings
from typing import Any

import mlflow.pyfunc
import numpy as np


def signature() -> Any:
    """Input: one image or a batch of them (see `KitPyfuncModel.predict`); output: label image(s). Both
    are declared as object tensors: images come in any dtype, with or without channels, at any size."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    spec = TensorSpec(np.dtype("O"), (-1,))
    return ModelSignature(inputs=Schema([spec]), outputs=Schema([spec]))


def split_batch(model_input: Any) -> tuple[list[np.ndarray], bool]:
    """(images, whether the input was a batch). One image: an H×W array, or H×W×C with C ≤ 4. A batch: a
    list or 1-D object array of images, an (N, H, W) array with W > 4, or an (N, H, W, C) array."""
    if isinstance(model_input, (list, tuple)) or (
        isinstance(model_input, np.ndarray) and model_input.dtype == object
    ):
        return [np.asarray(image) for image in model_input], True
    x = np.asarray(model_input)
    if x.ndim == 2 or (x.ndim == 3 and x.shape[2] <= 4):
        return [x], False
    if x.ndim in (3, 4):
        return list(x), True
    raise ValueError(f"expected an image (H×W or H×W×C) or a batch of them, got shape {x.shape}")


# MLflow warns at class creation that predict has no type hints: kit's input (an image of any dtype and
# layout, or a batch) has none to offer, and the signature below documents it instead.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method")

    class KitPyfuncModel(mlflow.pyfunc.PythonModel):
        """A kit model folder (artifact `kit_model`) as a pyfunc model."""

        def load_context(self, context: Any) -> None:
            from pathlib import Path

            from kit.stages.model import KIT_MODEL_ARTIFACT, load_model_folder

            self.model = load_model_folder(Path(context.artifacts[KIT_MODEL_ARTIFACT]))

        def predict(self, context, model_input, params=None):
            """Label image (int32 H×W) of one image; for a batch a stacked (N, H, W) array when the sizes
            agree, else a 1-D object array of label images."""
            images, batch = split_batch(model_input)
            labels = [self.model.predict(image) for image in images]
            if not batch:
                return labels[0]
            if len({lab.shape for lab in labels}) == 1:
                return np.stack(labels)
            out = np.empty(len(labels), dtype=object)
            out[:] = labels
            return out
