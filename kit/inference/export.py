"""A U-Net's network as a portable file: TorchScript and ONNX, with dynamic height and width.

What is exported is the network plus its output activation (`ProbabilityNet`): a float32 (N, C, H, W)
batch in [0, 1] (a `normalize_image` output / 255) → probability maps (N, K, H, W) named by the model's
`kit_cfg["channels"]`; H and W must be multiples of `kit_cfg["output_stride"]` (pad first). NOT in the
file: normalisation, tiling, test-time augmentation, fold averaging and the watershed post-processing
(`kit.inference.postprocess.instances_from_probs`), which stay in Python.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kit.errors import ConfigError, KitError
from kit.inference.tiling import SOFTMAX_GROUP, probabilities


class ProbabilityNet(nn.Module):
    """A semantic kit model followed by its output activation (softmax or per-channel sigmoid)."""

    def __init__(self, model: nn.Module, mode: str = "softmax") -> None:
        super().__init__()
        if model.kit_cfg.get("task") != "semantic":
            raise ConfigError(
                "only semantic models (U-Net, FPN) export; Mask R-CNN's detection head does not"
            )
        self.model = model.eval()
        self.channels = tuple(model.kit_cfg["channels"])
        probabilities(torch.zeros(1, len(self.channels), 1, 1), self.channels, mode)  # checks mode/channels
        group = (
            [i for i, name in enumerate(self.channels) if name in SOFTMAX_GROUP] if mode == "softmax" else []
        )
        # Per output channel: its column in the softmax of the group, or -1 for a sigmoid. Slicing and
        # concatenating (rather than `probabilities`' in-place index assignment) exports cleanly.
        self.softmax_group = group
        self.layout = [group.index(i) if i in group else -1 for i in range(len(self.channels))]
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x).float()
        sig = torch.sigmoid(logits)
        soft = torch.softmax(logits[:, self.softmax_group], dim=1) if self.softmax_group else sig
        parts = [soft[:, j : j + 1] if j >= 0 else sig[:, i : i + 1] for i, j in enumerate(self.layout)]
        return torch.cat(parts, dim=1)


def export_torchscript(net: ProbabilityNet, path: str | os.PathLike, example: torch.Tensor) -> Path:
    """Trace `net` on `example` (N, C, H, W) and save it; convolutions make the trace size-independent.

    torch ≥ 2.10 marks TorchScript deprecated in favour of torch.export; it is still what libtorch (C++)
    and most serving stacks load, so kit writes it and silences that one warning here."""
    import warnings

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r".*torch\.jit\.trace.* is deprecated", category=FutureWarning
        )
        traced = torch.jit.trace(net, example, check_trace=False)
    traced.save(str(path))
    return path


def export_onnx(net: ProbabilityNet, path: str | os.PathLike, example: torch.Tensor) -> Path:
    """Export `net` to ONNX with torch's dynamo exporter, batch, height and width dynamic."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dims = {0: torch.export.Dim("batch", min=1), 2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO}
    try:
        with torch.no_grad():
            torch.onnx.export(
                net,
                (example,),
                str(path),
                input_names=["image"],
                output_names=["probs"],
                dynamic_shapes={"x": dims},
                dynamo=True,
                verbose=False,
            )
    except ImportError as exc:
        raise KitError(f"ONNX export needs onnx and onnxscript: pip install 'kit[onnx]' ({exc})") from None
    return path


def run_torchscript(path: str | os.PathLike, x: np.ndarray) -> np.ndarray:
    """Probabilities of a batch `x` (N, C, H, W float32) from a TorchScript file."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r".*torch\.jit\.load.* is deprecated", category=FutureWarning
        )
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def run_onnx(path: str | os.PathLike, x: np.ndarray) -> np.ndarray:
    """Probabilities of a batch `x` (N, C, H, W float32) from an ONNX file, with ONNX Runtime."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise KitError("checking ONNX files needs ONNX Runtime: pip install 'kit[onnx]'") from None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": x})[0]


def pad_to(x: np.ndarray, multiple: int) -> np.ndarray:
    """(N, C, H, W) zero-padded at the bottom and right to multiples of `multiple`."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    return np.pad(x, ((0, 0), (0, 0), (0, ph), (0, pw))) if ph or pw else x
