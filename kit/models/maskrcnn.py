"""Mask R-CNN (torchvision) for nuclei: small anchors, many detections, images kept at native scale.

Encoder "resnet50" is torchvision's reference ResNet-50-FPN backbone (the module layout of
`maskrcnn_resnet50_fpn`, so torchvision's COCO Mask R-CNN file loads by name through
`pretrained: <path>`); any other name ("tu-resnet50" included) is a timm encoder (`features_only`, its
stride 4, 8, 16 and 32 maps) under torchvision's `FeaturePyramidNetwork`. The pyramid has five levels
(strides 4 to 64, one anchor size each, 8 to 128 px by default as in DSB2018's 3rd place). All layers
train and BatchNorm stays trainable, as in kit's U-Nets (no frozen stages: checkpoints rebuild the same
modules whether or not the weights were pretrained).

Conventions (torchvision's detection API): input is a list of float32 (C, H, W) tensors in [0, 1], any
size. Images are normalised with ImageNet mean/std (their mean for one channel) but never resized, so
nuclei keep their pixel size, which the anchors are chosen for, and tiles and crops need no rescaling.
In train mode `model(images, targets)` returns a dict of losses; targets hold "boxes" float32 (N, 4)
(x0, y0, x1, y1) through the centres of the extreme pixels (`kit.targets.instance_targets`), "labels"
int64 (N,) of 1 and "masks" uint8 (N, H, W). In eval mode `model(images)` returns per image "boxes",
"labels", "scores" and "masks" float32 (N, 1, 28, 28): each mask's probabilities over its box, not
pasted into the image (pasting hundreds of full-size masks costs gigabytes on a large image);
`kit.inference.instance_predictor.paste_masks` pastes each into its box only.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import timm
import torch
from torch import nn
from torchvision.models import ResNet50_Weights, resnet50
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from kit.errors import ConfigError
from kit.models.registry import register_model
from kit.models.unet import timm_name
from kit.models.weights import load_matching, read_state_dict
from kit.models.weights_folder import TORCHVISION_RESNET50, resolve_pretrained

TORCHVISION_ENCODER = "resnet50"
PYRAMID_STRIDES = (4, 8, 16, 32, 64)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@register_model(task="instance")
def maskrcnn(
    encoder: str = TORCHVISION_ENCODER,
    in_channels: int = 3,
    pretrained: bool | str | Path = False,
    anchor_sizes: Sequence[int] = (8, 16, 32, 64, 128),
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    max_detections: int = 512,
    rpn_nms: float = 0.7,
    box_nms: float = 0.3,
    box_score_threshold: float = 0.05,
    rois_per_image: int = 512,
    fpn_channels: int = 256,
    box_head_size: int = 1024,
) -> MaskRCNN:
    """Mask R-CNN with one foreground class (nucleus); see the module docstring.

    `pretrained`: False = random init, True = ImageNet encoder weights (torchvision's for "resnet50",
    timm's otherwise) from the weights folder or the hub (`kit.models.weights_folder`), a path = a state_dict for the whole detector (e.g. torchvision's
    COCO `maskrcnn_resnet50_fpn` file, or a kit checkpoint) loaded where names and shapes match.
    `anchor_sizes`: one per pyramid level (strides 4..64). `max_detections`, `rpn_nms`, `box_nms` and
    `box_score_threshold` are torchvision's `box_detections_per_img`, `rpn_nms_thresh`, `box_nms_thresh`
    and `box_score_thresh`: the candidates the network returns, before kit's own score threshold
    (`instances.score_threshold`). `rois_per_image`: proposals sampled per training image for the box and
    mask heads (torchvision's `box_batch_size_per_image`; a quarter of them positive at most).
    `fpn_channels` and `box_head_size` size the heads (256 and 1024 in torchvision; the mask head's four
    convolutions have `fpn_channels` channels, the bulk of the cost on a CPU).
    """
    if len(anchor_sizes) != len(PYRAMID_STRIDES):
        raise ConfigError(
            f"maskrcnn: anchor_sizes needs one size per pyramid level (strides {PYRAMID_STRIDES}), "
            f"got {tuple(anchor_sizes)}"
        )
    if in_channels not in (1, 3):
        raise ConfigError(f"maskrcnn: in_channels must be 1 or 3, got {in_channels}")
    torchvision = encoder == TORCHVISION_ENCODER
    name = TORCHVISION_ENCODER if torchvision else timm_name(encoder)
    weights_name = TORCHVISION_RESNET50 if torchvision else name
    if isinstance(pretrained, bool):
        weights = resolve_pretrained(weights_name, pretrained, hub="torchvision" if torchvision else "timm")
    else:  # a file for the whole detector, loaded below
        weights = resolve_pretrained(weights_name, pretrained)
    from_hub = weights.kind == "hub"
    if torchvision:
        backbone = _torchvision_resnet50_fpn(in_channels, from_hub, fpn_channels)
    else:
        backbone = TimmFPN(name, in_channels, from_hub, fpn_channels)
    if pretrained is True and weights.kind == "file":
        body = backbone.body
        load_matching(body, read_state_dict(weights.path), in_channels=in_channels, origin=weights.path)
    resolution = 7  # torchvision's RoI pooling size for boxes (masks: 14)
    model = MaskRCNN(
        backbone,
        num_classes=None,
        rpn_anchor_generator=AnchorGenerator(
            tuple((int(s),) for s in anchor_sizes),
            (tuple(float(r) for r in aspect_ratios),) * len(anchor_sizes),
        ),
        rpn_nms_thresh=rpn_nms,
        box_head=TwoMLPHead(fpn_channels * resolution**2, box_head_size),
        box_predictor=FastRCNNPredictor(box_head_size, 2),
        box_nms_thresh=box_nms,
        box_score_thresh=box_score_threshold,
        box_detections_per_img=max_detections,
        box_batch_size_per_image=rois_per_image,
        mask_head=MaskRCNNHeads(fpn_channels, (fpn_channels,) * 4, 1),
        mask_predictor=MaskRCNNPredictor(fpn_channels, fpn_channels, 2),
    )
    mean = _IMAGENET_MEAN if in_channels == 3 else (sum(_IMAGENET_MEAN) / 3,)
    std = _IMAGENET_STD if in_channels == 3 else (sum(_IMAGENET_STD) / 3,)
    model.transform = NativeScaleTransform(mean, std)
    model.kit_cfg = {
        "arch": "maskrcnn",
        "encoder": name,
        "in_channels": in_channels,
        "channels": ("mask",),
        "output_stride": 32,
        "weights": weights,
    }
    if not isinstance(pretrained, bool):
        load_matching(model, read_state_dict(weights.path), in_channels=in_channels, origin=weights.path)
    return model


class NativeScaleTransform(GeneralizedRCNNTransform):
    """torchvision's detection transform (normalise, batch with padding to a multiple of 32) without the
    resize to 800 px and without pasting masks into the image (see the module docstring)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__(min_size=800, max_size=1333, image_mean=list(mean), image_std=list(std))

    def resize(self, image: torch.Tensor, target: dict | None = None) -> tuple[torch.Tensor, dict | None]:
        return image, target

    def postprocess(self, result: list[dict], image_shapes: list, original_image_sizes: list) -> list[dict]:
        return result


class TimmFPN(nn.Module):
    """A timm encoder's stride 4, 8, 16, 32 maps under a feature pyramid with a max-pooled 5th level.

    forward: (N, C, H, W) → OrderedDict "0".."3", "pool" of (N, out_channels, H/s, W/s).
    """

    def __init__(self, name: str, in_channels: int, pretrained: bool, out_channels: int) -> None:
        super().__init__()
        try:
            self.body = timm.create_model(
                name, features_only=True, pretrained=pretrained, in_chans=in_channels
            )
        except (RuntimeError, ValueError, KeyError) as e:
            raise ConfigError(f"maskrcnn: cannot build encoder {name!r}: {e}") from e
        reductions = self.body.feature_info.reduction()
        wanted = PYRAMID_STRIDES[:-1]
        if not set(wanted) <= set(reductions):
            raise ConfigError(
                f"maskrcnn: encoder {name!r} has feature strides {reductions}; an FPN needs {wanted}"
            )
        self.levels = [reductions.index(s) for s in wanted]
        channels = self.body.feature_info.channels()
        self.fpn = FeaturePyramidNetwork([channels[i] for i in self.levels], out_channels, LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        features = self.body(x)
        return self.fpn(OrderedDict((str(k), features[i]) for k, i in enumerate(self.levels)))


def _torchvision_resnet50_fpn(in_channels: int, pretrained: bool, out_channels: int) -> BackboneWithFPN:
    """torchvision's ResNet-50 under its FPN, named as in `maskrcnn_resnet50_fpn`; all layers trainable."""
    resnet = resnet50(weights=ResNet50_Weights.IMAGENET1K_V1 if pretrained else None)
    if in_channels != 3:
        stem = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        if pretrained:
            stem.weight.data = resnet.conv1.weight.data.sum(dim=1, keepdim=True)
        resnet.conv1 = stem
    return BackboneWithFPN(
        resnet,
        return_layers={f"layer{k}": str(k - 1) for k in range(1, 5)},
        in_channels_list=[256, 512, 1024, 2048],
        out_channels=out_channels,
        extra_blocks=LastLevelMaxPool(),
    )
