"""Model builders (registry keyed by the name used in experiment configs) and checkpoints.

Families register by being imported here; add a new family module to the imports below.
"""

from kit.models import maskrcnn, unet  # noqa: F401  (register maskrcnn; unet, fpn)
from kit.models.checkpoint import load_checkpoint, save_checkpoint
from kit.models.registry import TASKS, create_model, list_models, model_task, register_model, task_of

__all__ = [
    "TASKS",
    "create_model",
    "list_models",
    "load_checkpoint",
    "model_task",
    "register_model",
    "save_checkpoint",
    "task_of",
]
