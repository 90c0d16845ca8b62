"""A U-Net's network as a portable file: TorchScript and ONNX, with dynamic height and width.

What is exported is the network plus its output activation (`ProbabilityNet`): a float32 (N, C, H, W)
batch in [0, 1] (a `normalize_image` output / 255) → probability maps (N, K, H, W) named by the model's
`kit_cfg["channels"]`; H and W must be multiples of `kit_cfg["output_stride"]` (pad first). NOT in the
file: normalisation, tiling, test-time augmentation, fold averaging and the watershed post-processing
(`kit.inference.postprocess.instances_from_probs`), which stay in Python.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kit.data.normalize import normalize_image
from kit.errors import ConfigError, KitError
from kit.fileio import atomic_write_text
from kit.models.activation import SOFTMAX_GROUP, model_activation
from kit.models.fitted import FittedModule

EXPORT_FORMATS = ("torchscript", "onnx")


class ProbabilityNet(nn.Module):
    """A semantic kit model followed by its recorded output activation (softmax or per-channel sigmoid).

    The exported network is float32 in the default (NCHW) memory format whatever `inference.precision`
    and `inference.channels_last` say: `model` is put back in that format in place (channels-last strides
    would make torch.export specialise the batch size), and no autocast is traced. Runtimes that load
    the file choose their own precision."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if model.kit_cfg.get("task") != "semantic":
            raise ConfigError(
                "only semantic models (U-Net, FPN) export; Mask R-CNN's detection head does not"
            )
        if isinstance(model, FittedModule):
            raise ConfigError(
                f"{model.kit_cfg['arch']} computes its maps with numpy/scipy/LightGBM, not torch: there is no "
                "network to export; use the MLflow Model (`kit register`) instead"
            )
        self.model = model.to(memory_format=torch.contiguous_format).eval()
        self.channels = tuple(model.kit_cfg["channels"])
        activation = model_activation(model)
        group = (
            [i for i, name in enumerate(self.channels) if name in SOFTMAX_GROUP]
            if activation == "softmax"
            else []
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


def network_input(image: np.ndarray, in_channels: int, multiple: int) -> np.ndarray:
    """What an exported file takes for one raw image: `normalize_image(image) / 255` as float32
    (1, C, H, W), zero-padded at the bottom and right to multiples of `multiple`."""
    x = normalize_image(np.asarray(image), in_channels).transpose(2, 0, 1)[None].astype(np.float32) / 255
    return pad_to(np.ascontiguousarray(x), multiple)


def export_segmenter(
    segmenter: Any,
    out_dir: Path,
    images: Sequence[np.ndarray],
    *,
    formats: Sequence[str] = EXPORT_FORMATS,
    source: str = "",
) -> list[dict]:
    """Export the network of every fold model of a semantic `kit.Segmenter` as `formats` into `out_dir`
    (`model<k>.pt`, `model<k>.onnx`), each checked against PyTorch on `images` (raw, normalised as in
    training); `export.json` describes the input, the output, what the files leave out, and for each file
    its largest absolute difference on the checked images. Returns those per-file records."""
    unknown = sorted(set(formats) - set(EXPORT_FORMATS))
    if unknown:
        raise ConfigError(
            f"unknown export format(s) {', '.join(unknown)}; choose from {', '.join(EXPORT_FORMATS)}"
        )
    if getattr(segmenter, "task", None) != "semantic":
        raise ConfigError(f"{source or 'this model'}: only U-Net/FPN models export (their network)")
    if not images:
        raise ConfigError("exporting needs at least one image to check the exported files on")
    stride = segmenter.models[0].kit_cfg["output_stride"]
    batches = [network_input(image, segmenter.in_channels, stride) for image in images]
    writers = {
        "torchscript": (export_torchscript, run_torchscript, ".pt"),
        "onnx": (export_onnx, run_onnx, ".onnx"),
    }
    records = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for k, network in enumerate(segmenter.models):
        net = ProbabilityNet(network.cpu())
        with torch.no_grad():
            expected = [net(torch.from_numpy(b)).numpy() for b in batches]
        for fmt in formats:
            write, run, suffix = writers[fmt]
            path = write(net, out_dir / f"model{k}{suffix}", torch.from_numpy(batches[0]))
            diff = max(float(np.abs(run(path, b) - e).max()) for b, e in zip(batches, expected, strict=True))
            records.append(
                {
                    "file": path.name,
                    "format": fmt,
                    "fold_model": k,
                    "max_abs_diff": diff,
                    "checked_on": [list(b.shape) for b in batches],
                }
            )
    info = {
        "source": source,
        "input": "float32 (N, C, H, W) in [0, 1]: normalize_image(image) / 255, H and W multiples of "
        f"{stride} (pad at the bottom/right)",
        "output": f"probabilities (N, K, H, W), channels {list(net.channels)}",
        "not_included": "normalisation, tiling, test-time augmentation, fold averaging, watershed post-processing",
        "thresholds": segmenter.thresholds.model_dump(mode="json"),
        "files": records,
    }
    atomic_write_text(out_dir / "export.json", json.dumps(info, indent=2))
    return records
