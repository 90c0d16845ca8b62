"""Model builders (registry keyed by the name used in experiment configs) and checkpoints.

Families register by being imported here; add a new family module to the imports below.
"""

from kit.models import classical, deepcell, maskrcnn, pixel_forest, unet  # noqa: F401  (register them)
from kit.models.checkpoint import load_checkpoint, save_checkpoint
from kit.models.registry import (
    TASKS,
    build_model,
    create_model,
    list_models,
    model_arguments,
    model_task,
    register_model,
    task_of,
)


def weights_source(name: str, encoder: str, pretrained: bool | str):
    """Where model `name`'s encoder weights would come from (`kit.models.weights_folder.WeightsSource`),
    decided without building the model: a missing file or an unreachable hub fails here, in seconds.
    A family without an encoder (`classical`, `pixel_forest`, `deepcell`) has no pretrained weights: its
    own builder says where its start came from, and `pretrained` must be false."""
    from kit.errors import ConfigError
    from kit.models.unet import timm_name
    from kit.models.weights_folder import TORCHVISION_RESNET50, WeightsSource, resolve_pretrained

    if "encoder" not in model_arguments(name):
        if pretrained is not False:
            raise ConfigError(
                f"model {name!r} has no encoder and no pretrained weights; set model.pretrained: false"
            )
        return WeightsSource("none", name)
    if name == "maskrcnn" and encoder == maskrcnn.TORCHVISION_ENCODER:
        return resolve_pretrained(TORCHVISION_RESNET50, pretrained, hub="torchvision")
    return resolve_pretrained(timm_name(encoder), pretrained)


__all__ = [
    "TASKS",
    "build_model",
    "create_model",
    "list_models",
    "load_checkpoint",
    "model_arguments",
    "model_task",
    "register_model",
    "save_checkpoint",
    "task_of",
    "weights_source",
]
