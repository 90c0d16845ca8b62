"""Model builders (registry keyed by the name used in experiment configs) and checkpoints.

Families register by being imported here; add a new family module to the imports below.
"""

from kit.models import unet  # noqa: F401  (registers unet, fpn)
from kit.models.checkpoint import load_checkpoint, save_checkpoint
from kit.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "load_checkpoint", "register_model", "save_checkpoint"]
