"""New training samples of one style: layouts from existing masks → pix2pix generator → image + labels.

The labels of a synthesised sample are exactly the layout the generator was conditioned on, so the
truth is exact by construction (nucleAIzer's point): a rare style gets as many images as wanted.
"""

from __future__ import annotations

import numpy as np

from kit.data.sample import Sample
from kit.style.layouts import LayoutSampler
from kit.style.pix2pix import Generator, render

SYNTHETIC_NOTE = "style-synthetic"


def synthesize_samples(
    generator: Generator,
    layouts: LayoutSampler,
    n: int,
    *,
    size: tuple[int, int],
    rng: np.random.Generator,
    style: int,
    source: str,
) -> list[Sample]:
    """`n` train-split samples of `size` (H, W) with ids ``style<style>_<i>``; each note says
    ``style-synthetic; generator-style=<style>`` and `source` names the generator."""
    width = max(4, len(str(n - 1)))
    samples = []
    for i in range(n):
        labels = layouts.sample(size, rng)
        image = render(generator, labels)
        samples.append(
            Sample(
                id=f"style{style}_{i:0{width}d}",
                image=image[:, :, 0] if image.shape[2] == 1 else image,
                labels=labels,
                split="train",
                source=source,
                note=f"{SYNTHETIC_NOTE}; generator-style={style}",
            )
        )
    return samples
