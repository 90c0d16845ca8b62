"""A kit model as an MLflow pyfunc: what `mlflow.pyfunc.load_model(uri).predict(...)` and
`mlflow models serve` take and return.

Input (`model_input`; over HTTP, the value of `"inputs"` in the JSON body):

- one image: an H×W or H×W×C (C ≤ 4) array, or the same as nested lists (`{"inputs": image}`);
- a batch of images of one size: an (N, H, W[, C]) array, or a list of them (`{"inputs": [image1, image2]}`);
- encoded files, of any sizes: base64 strings of PNG, TIFF or JPEG files (`{"inputs": ["iVBORw0..."]}`),
  or a table with one such string per row in a column `image`
  (`{"dataframe_records": [{"image": "iVBORw0..."}]}`), each decoded as `kit.fileio.decode_image` does
  (bit depth kept).

Output: the label image (int32 H×W, 0 = background) of one image, or the label images of a batch (an
(N, H, W) array, or a list when the sizes differ); over HTTP `{"predictions": ...}` as nested lists. An
input of the wrong shape or an undecodable file is an HTTP 400 whose message says what was expected.

The Model has no MLflow signature: no tensor schema describes "an image of any size, with or without
channels, or a batch of them"; kit checks every input itself (`parse_input`). MLflow's own JSON parsing
turns nested lists into one array, so a batch of nested lists must hold images of one size (MLflow
answers 400 otherwise); send images of different sizes as base64 files.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from kit.errors import DataError, KitError
from kit.inference.contract import split_batch

SERVING_EXAMPLE_SIZE = 32
"""Side of the blank image in a logged Model's input example (what MLflow runs to validate serving)."""
FILE_COLUMN = "image"
"""The column of base64-encoded image files in a table input."""


def example_input(in_channels: int, size: int = SERVING_EXAMPLE_SIZE) -> np.ndarray:
    """A batch of one blank uint8 image of the input a model takes: the input example of its MLflow
    Model (MLflow validates it by serving it at logging time)."""
    shape = (1, size, size) if in_channels == 1 else (1, size, size, in_channels)
    return np.zeros(shape, dtype=np.uint8)


def parse_input(model_input: Any) -> tuple[list[np.ndarray], bool]:
    """(images, whether the input was a batch) of a pyfunc input (see the module docstring)."""
    if isinstance(model_input, pd.DataFrame):
        if FILE_COLUMN not in model_input.columns:
            raise DataError(
                f"a table input needs a column {FILE_COLUMN!r} of base64 PNG/TIFF/JPEG files; got columns "
                f"{list(model_input.columns)}"
            )
        return [_decode(text, i) for i, text in enumerate(model_input[FILE_COLUMN])], True
    if isinstance(model_input, str) or (
        isinstance(model_input, np.ndarray) and model_input.dtype.kind in "US"
    ):
        texts = np.atleast_1d(np.asarray(model_input, dtype=str))
        return [_decode(str(text), i) for i, text in enumerate(texts.ravel())], np.ndim(model_input) > 0
    if isinstance(model_input, (np.ndarray, list, tuple)):
        return split_batch(model_input)
    raise DataError(
        "expected an image (H×W or H×W×C, nested lists or an array), a batch of them, or base64 "
        f"PNG/TIFF/JPEG files; got {type(model_input).__name__}"
    )


def _decode(text: Any, index: int) -> np.ndarray:
    from kit.fileio import decode_image

    try:
        data = base64.b64decode(str(text), validate=True)
    except (binascii.Error, ValueError):
        raise DataError(f"input {index} is not base64 (expected a base64 PNG, TIFF or JPEG file)") from None
    return decode_image(data, f"input {index}")


class KitPyfuncModel(mlflow.pyfunc.PythonModel):
    """A kit model folder (artifact `kit_model`) as a pyfunc model (see the module docstring)."""

    def load_context(self, context: Any) -> None:
        from pathlib import Path

        from kit.hub.load import KIT_MODEL_ARTIFACT, load_model_folder

        self.model = load_model_folder(Path(context.artifacts[KIT_MODEL_ARTIFACT]))

    # The `np.ndarray` hint only tells MLflow not to infer a schema from it (see the module docstring).
    def predict(self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None) -> Any:
        """The label image of one image, or the label images of a batch."""
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        try:
            images, batch = parse_input(model_input)
            labels = [self.model.predict(image) for image in images]
        except KitError as exc:  # a bad input: HTTP 400 with kit's one-line message
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None
        if not batch:
            return labels[0]
        if len({lab.shape for lab in labels}) == 1:
            return np.stack(labels)
        return labels
