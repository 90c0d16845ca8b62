"""Cut an image into blocks: disjoint cores that tile it, each seen with a halo and a context.

For each block, three nested regions (global pixel coordinates, clipped to the image):

    read   = window ± context    what the model is given (the context only feeds the network); its
                                 top-left corner is moved back to a multiple of `ALIGN` so that the
                                 network sees every block on the sampling grid of the whole image
    window = core ± halo         where its instances are taken from (the halo lets a nucleus that
                                 crosses the core's edge be seen whole)
    core   = block × block       the cores tile the image without overlap; one output chunk-aligned
                                 region per block, written by that block only

An edge of a core is a *seam* where another core continues (it lies inside the image); an edge of a
window is *cut* where it lies inside the image. Edges on the image border are neither.
`kit.scale.stitch` decides which block keeps each nucleus.
"""

from __future__ import annotations

from dataclasses import dataclass

from kit.errors import ConfigError

ALIGN = 32
"""Read regions start at multiples of this: the largest stride of kit's networks (a U-Net of depth 5),
which every smaller power-of-two stride divides (`kit.inference.tiling` starts its tiles the same way)."""

Region = tuple[int, int, int, int]
"""(y0, y1, x0, x1), half-open, in global pixel coordinates."""


@dataclass(frozen=True)
class Block:
    """One block of a `BlockPlan`: its grid position, its core, window and read regions, which of the
    core's edges (top, bottom, left, right) are seams and which of the window's are cut."""

    index: int
    row: int
    col: int
    core: Region
    window: Region
    read: Region
    seams: tuple[bool, bool, bool, bool]
    cut: tuple[bool, bool, bool, bool]

    def depth(self, cy: float, cx: float) -> float:
        """Signed distance of point (cy, cx) from the core's seams: positive inside the core, negative
        outside, +inf when the core has no seam (the block is the whole image)."""
        y0, y1, x0, x1 = self.core
        top, bottom, left, right = self.seams
        dists = [d for d, on in ((cy - y0, top), (y1 - cy, bottom), (cx - x0, left), (x1 - cx, right)) if on]
        return min(dists) if dists else float("inf")


@dataclass(frozen=True)
class BlockPlan:
    """The blocks covering an image of `shape` (H, W): `block`-sized cores, `halo` and `context` pixels."""

    shape: tuple[int, int]
    block: int
    halo: int
    context: int

    def __post_init__(self) -> None:
        if self.block < 1 or self.halo < 0 or self.context < 0:
            raise ConfigError(
                f"blocks need block >= 1, halo >= 0 and context >= 0; got block={self.block}, "
                f"halo={self.halo}, context={self.context}"
            )
        if min(self.shape) < 1:
            raise ConfigError(f"cannot cut an empty image of shape {self.shape} into blocks")

    @property
    def grid(self) -> tuple[int, int]:
        """Number of block rows and columns."""
        h, w = self.shape
        return -(-h // self.block), -(-w // self.block)

    def __len__(self) -> int:
        rows, cols = self.grid
        return rows * cols

    def blocks(self) -> list[Block]:
        """Every block, row by row."""
        h, w = self.shape
        rows, cols = self.grid
        out = []
        for r in range(rows):
            for c in range(cols):
                y0, x0 = r * self.block, c * self.block
                y1, x1 = min(y0 + self.block, h), min(x0 + self.block, w)
                window = _grow((y0, y1, x0, x1), self.halo, h, w)
                read = _grow(window, self.context, h, w)
                read = (read[0] // ALIGN * ALIGN, read[1], read[2] // ALIGN * ALIGN, read[3])
                seams = (y0 > 0, y1 < h, x0 > 0, x1 < w)
                cut = (window[0] > 0, window[1] < h, window[2] > 0, window[3] < w)
                out.append(Block(len(out), r, c, (y0, y1, x0, x1), window, read, seams, cut))
        return out

    def neighbours(self, block: Block) -> list[int]:
        """Indices of the blocks whose windows can overlap `block`'s window (the 8-neighbourhood, or more
        when the halo is wider than a block)."""
        rows, cols = self.grid
        reach = 1 + (2 * self.halo) // self.block
        return [
            r * cols + c
            for r in range(max(0, block.row - reach), min(rows, block.row + reach + 1))
            for c in range(max(0, block.col - reach), min(cols, block.col + reach + 1))
            if (r, c) != (block.row, block.col)
        ]


def _grow(region: Region, by: int, h: int, w: int) -> Region:
    y0, y1, x0, x1 = region
    return max(0, y0 - by), min(h, y1 + by), max(0, x0 - by), min(w, x1 + by)
