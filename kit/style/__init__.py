"""Style transfer: reference pools for classical transfer, pix2pix per style cluster, synthetic data.

Torch-dependent parts (`kit.style.pix2pix`, `kit.style.synth`, `kit.stages.style`) are imported by
name where needed, so that importing `kit.style` stays light.
"""

from kit.style.references import ReferencePool, StyleReferences, parse_selection

__all__ = ["ReferencePool", "StyleReferences", "parse_selection"]
