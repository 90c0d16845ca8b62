"""U-Net and FPN on timm encoders, built with segmentation-models-pytorch.

Encoders are timm names routed through smp's `tu-` prefix (`TimmUniversalEncoder`, which calls
`timm.create_model(name, features_only=True, ...)`), so any timm backbone with a features_only mode
works and there is no second encoder registry. The network maps a float32 (N, in_channels, H, W) tensor
in [0, 1] to logits (N, len(channels), H, W); H and W must be multiples of `kit_cfg["output_stride"]`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import segmentation_models_pytorch as smp
import timm

from kit.errors import ConfigError
from kit.models.activation import Activation, check_activation
from kit.models.registry import closest_match_hint, register_model
from kit.models.weights import load_matching, read_state_dict
from kit.models.weights_folder import resolve_pretrained

DEFAULT_CHANNELS = ("body", "border", "background")
_UNET_DECODER_CHANNELS = (256, 128, 64, 32, 16)
_FPN_DECODER_CHANNELS = (256, 128)


@register_model
def unet(
    encoder: str = "resnet34",
    in_channels: int = 3,
    channels: Sequence[str] = DEFAULT_CHANNELS,
    pretrained: bool | str | Path = False,
    encoder_depth: int = 5,
    decoder_channels: Sequence[int] | None = None,
    activation: Activation = "softmax",
) -> smp.Unet:
    """U-Net on a timm encoder (with or without "tu-").

    `pretrained`: False = random init, True = ImageNet weights from the weights folder or the hub, a
    path = a local encoder state_dict or checkpoint (`kit.models.weights_folder`, `load_encoder_weights`). `decoder_channels` has one
    entry per encoder stage (default (256, 128, 64, 32, 16)[:encoder_depth]). `activation` turns the
    logits into probabilities (`kit.models.activation`: "softmax" over body/border/background, or an
    independent "sigmoid" per channel) and is recorded on the model for inference.
    """
    _check_depth("unet", encoder_depth, 1)
    decoder_channels = tuple(decoder_channels or _UNET_DECODER_CHANNELS[:encoder_depth])
    if len(decoder_channels) != encoder_depth:
        raise ConfigError(
            f"unet: decoder_channels {decoder_channels} has {len(decoder_channels)} entries, "
            f"encoder_depth is {encoder_depth}; give one per stage"
        )
    return _build(
        smp.Unet,
        "unet",
        encoder,
        in_channels,
        channels,
        pretrained,
        encoder_depth,
        activation,
        decoder_channels=decoder_channels,
    )


@register_model
def fpn(
    encoder: str = "resnet34",
    in_channels: int = 3,
    channels: Sequence[str] = DEFAULT_CHANNELS,
    pretrained: bool | str | Path = False,
    encoder_depth: int = 5,
    decoder_channels: Sequence[int] | None = None,
    activation: Activation = "softmax",
) -> smp.FPN:
    """FPN on a timm encoder; arguments as for `unet` except `decoder_channels`.

    `decoder_channels` = (pyramid channels, segmentation-head channels), default (256, 128).
    """
    _check_depth("fpn", encoder_depth, 3)
    decoder_channels = tuple(decoder_channels or _FPN_DECODER_CHANNELS)
    if len(decoder_channels) != 2:
        raise ConfigError(f"fpn: decoder_channels must be (pyramid, segmentation), got {decoder_channels}")
    return _build(
        smp.FPN,
        "fpn",
        encoder,
        in_channels,
        channels,
        pretrained,
        encoder_depth,
        activation,
        decoder_pyramid_channels=decoder_channels[0],
        decoder_segmentation_channels=decoder_channels[1],
        # smp's FPN head sits at stride 2**(depth - 3) but always upsamples by 4 unless told otherwise.
        upsampling=2 ** (encoder_depth - 3),
    )


def _check_depth(arch: str, depth: int, low: int) -> None:
    if not low <= depth <= 5:
        raise ConfigError(f"{arch}: encoder_depth must be in {low}..5, got {depth}")


def timm_name(encoder: str) -> str:
    """The timm name for `encoder` (given with or without "tu-"); ConfigError if timm does not know it."""
    name = encoder.removeprefix("tu-")
    if not timm.is_model(name):
        raise ConfigError(
            f"unknown encoder {encoder!r}{closest_match_hint(name, timm.list_models())}; "
            "use a timm model name (timm.list_models())"
        )
    return name


def _build(
    arch_cls: type[smp.base.SegmentationModel],
    arch: str,
    encoder: str,
    in_channels: int,
    channels: Sequence[str],
    pretrained: bool | str | Path,
    encoder_depth: int,
    activation: Activation,
    **decoder_kwargs: object,
) -> smp.base.SegmentationModel:
    check_activation(activation, tuple(channels))
    name = timm_name(encoder)
    channels = tuple(channels)
    if not channels:
        raise ConfigError(f"{arch}: channels must name at least one output channel")
    weights = resolve_pretrained(name, pretrained)
    try:
        # smp passes `pretrained=weights is not None` to timm for tu- encoders: None = random init.
        model = arch_cls(
            encoder_name=f"tu-{name}",
            encoder_depth=encoder_depth,
            encoder_weights=True if weights.kind == "hub" else None,
            in_channels=in_channels,
            classes=len(channels),
            **decoder_kwargs,
        )
    except (RuntimeError, ValueError, KeyError) as e:
        raise ConfigError(f"{arch}: cannot build with encoder {name!r}: {e}") from e
    model.kit_cfg = {
        "arch": arch,
        "encoder": name,
        "in_channels": in_channels,
        "channels": channels,
        "activation": activation,
        "output_stride": int(model.encoder.output_stride),
        "encoder_depth": encoder_depth,
        "weights": weights,
    }
    if weights.kind == "file":
        load_encoder_weights(model, weights.path)
    return model


def load_encoder_weights(model: smp.base.SegmentationModel, path: str | Path) -> dict[str, int]:
    """Load a local state_dict / checkpoint into the encoder of a `unet`/`fpn` model (strict=False).

    Accepts a timm classifier state_dict (.pth/.bin/.safetensors, optionally wrapped under
    "state_dict"/"model") or a full smp/kit model state_dict (keys "encoder.model.*"). Keys match by
    name; timm's features_only wrapper renames flattened stages ("stages.1" → "stages_1"), so those
    match too. Convs over 3 input channels are adapted to `kit_cfg["in_channels"]` as timm does.
    Returns {"loaded", "missing", "unexpected", "mismatched"}; ConfigError if the file is missing or
    nothing matched.
    """
    source = read_state_dict(path)
    prefix = "encoder.model."
    if any(k.startswith(prefix) for k in source):
        source = {k.removeprefix(prefix): v for k, v in source.items() if k.startswith(prefix)}
    return load_matching(
        model.encoder.model,
        source,
        in_channels=model.kit_cfg["in_channels"],
        origin=str(path),
        aliases=lambda key: (key, re.sub(r"^(\w+?)_(\d+)\.", r"\1.\2.", key, count=1)),
    )
