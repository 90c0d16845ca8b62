"""How a network runs on a device: its numeric precision (autocast) and memory format (channels-last).

`ComputeMode.resolve` turns the configured `precision` (`kit.config.PRECISIONS`) into what runs:

- `fp32`: plain float32;
- `bf16`: bfloat16 autocast, on any device (slow on a CPU without native bf16, but what was asked);
- `fp16`: float16 autocast with a gradient scaler on CUDA. On a CPU it runs as fp32: CPU float16 kernels
  are emulated on all but the newest CPUs (measured here, `unet_lite0` 512² forward on an AVX512-BF16
  EPYC: fp16 ~7× slower than fp32, bf16 ~1.7× faster), so fp16 would only cost time there;
- `auto`: bf16 where the device runs it fast (`fast_bf16`: a CUDA GPU with bf16, a CPU reporting
  AVX512-BF16 or AMX-BF16), else fp32.

Autocast covers the network's forward pass only: weights stay float32 (the master weights an optimiser
updates, and what a checkpoint holds), and callers take `.float()` of the outputs, so losses,
probability maps and everything after them are float32 whatever the precision. Training on a CPU in
bf16 keeps depthwise convolutions in float32 (`ComputeMode.prepare_training`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from kit.config import PRECISIONS
from kit.errors import ConfigError

FAST_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
"""`torch.cpu.get_capabilities()` flags of x86 CPUs that compute bfloat16 natively."""

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU reports native bfloat16 arithmetic (AVX512-BF16 or AMX-BF16)."""
    capabilities = torch.cpu.get_capabilities()
    return any(bool(capabilities.get(flag)) for flag in FAST_BF16_CPU_FLAGS)


def fast_bf16(device: torch.device) -> bool:
    """Whether `device` runs bfloat16 faster than float32 (the rule of precision `auto`)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return cpu_has_fast_bf16()
    return False


def resolve_precision(requested: str, device: torch.device) -> str:
    """The precision that runs ("fp32", "bf16" or "fp16") for the configured one on `device`; see the
    module docstring. ConfigError for an unknown name."""
    if requested not in PRECISIONS:
        raise ConfigError(f"unknown precision {requested!r}; choose one of {', '.join(PRECISIONS)}")
    if requested == "auto":
        return "bf16" if fast_bf16(device) else "fp32"
    if requested == "fp16" and device.type == "cpu":
        return "fp32"
    return requested


def default_device(device: torch.device | str | None = None) -> torch.device:
    """`device`, or the GPU when torch sees one, else the CPU (where models predict by default)."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


@dataclass(frozen=True)
class ComputeMode:
    """A resolved precision and memory format on one device; apply it with `prepare` and `autocast`."""

    device: torch.device
    precision: str  # "fp32", "bf16" or "fp16", as resolved
    channels_last: bool

    @classmethod
    def resolve(cls, device: torch.device | str, precision: str, channels_last: bool) -> ComputeMode:
        """The mode of the configured `precision` and `channels_last` on `device`."""
        device = torch.device(device)
        return cls(device, resolve_precision(precision, device), channels_last)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    @property
    def needs_grad_scaler(self) -> bool:
        """float16 gradients underflow without loss scaling; bfloat16 has float32's range."""
        return self.precision == "fp16"

    def prepare(self, model: nn.Module) -> nn.Module:
        """`model` moved to the device and memory format, in place (its parameters stay float32)."""
        return model.to(self.device, memory_format=self.memory_format)

    def prepare_training(self, model: nn.Module) -> nn.Module:
        """`prepare`, and on a CPU in bf16 the depthwise convolutions kept in float32
        (`keep_depthwise_float32`)."""
        self.prepare(model)
        if self.device.type == "cpu" and self.precision == "bf16":
            keep_depthwise_float32(model)
        return model

    def input(self, x: torch.Tensor) -> torch.Tensor:
        """A 4-D batch on the device in the memory format the model expects."""
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=self.memory_format) if x.dim() == 4 else x

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast to the resolved precision around a forward pass (nothing for fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=_DTYPES[self.precision])

    def params(self, prefix: str) -> dict[str, str]:
        """What ran, for a run's params: `<prefix>.precision_used` and `<prefix>.channels_last_used`."""
        return {
            f"{prefix}.precision_used": self.precision,
            f"{prefix}.channels_last_used": str(self.channels_last).lower(),
        }


def keep_depthwise_float32(model: nn.Module) -> int:
    """Run `model`'s depthwise convolutions (groups = input channels > 1) in float32 inside a CPU
    autocast region, through hooks (the weights and the state dict are untouched); returns how many.

    Why: oneDNN's bfloat16 backward of a depthwise convolution is slower than its float32 one, while
    every other convolution gains. Measured on an AVX512-BF16 EPYC (unet_lite0 training step, 8 crops of
    192², 1 thread, torch 2.14): depthwise backward ~650 ms of a ~1.3 s bf16 step against ~185 ms in
    float32; the other convolutions' backward ~270 ms in bf16 against ~525 ms in float32.
    """
    layers = [
        m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels
    ]
    for layer in layers:
        layer.register_forward_pre_hook(_leave_autocast)
        layer.register_forward_hook(_reenter_autocast)
    return len(layers)


_LEFT_AUTOCAST = "_kit_left_autocast"


def _leave_autocast(module: nn.Module, args: tuple) -> tuple | None:
    if not torch.is_autocast_enabled("cpu"):
        return None
    torch.set_autocast_enabled("cpu", False)
    setattr(module, _LEFT_AUTOCAST, True)
    return tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)


def _reenter_autocast(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
    # An exception in between needs no restoring: leaving the enclosing `torch.autocast` block resets
    # the flag to what it was before the block.
    if getattr(module, _LEFT_AUTOCAST, False):
        setattr(module, _LEFT_AUTOCAST, False)
        torch.set_autocast_enabled("cpu", True)
