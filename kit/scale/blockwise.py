"""Block-wise prediction of one image of any size, with memory bounded by the block, not the image.

`predict_blockwise(model, image, out)` runs any model object whose `predict(image, details=True)` returns
a segmentation (`.labels`, int H×W; optionally `.instances()`, a table with label, score, mean_prob),
and `predict(..., intensity_ranges={channels: (lo, hi)})` normalises with the given whole-image levels
(`kit.Segmenter` and `kit.EnsembleSegmenter` do). The model knows nothing of blocks:

1. the image's intensity percentiles, block by block (`kit.scale.intensity`), so every block is
   normalised as the whole image would be;
2. every block: read its `read` region lazily, predict it, propose its nuclei (`kit.scale.stitch.propose`),
   write its core's interior nuclei and its image pixels into the output (one task per block);
3. arbitrate the nuclei near seams and number all nuclei 1..N (in this process: only seam nuclei and
   per-block tables travel here);
4. every block again: relabel its core and paint the seam nuclei it owns (one task per block);
5. the pyramid levels, a region at a time; the metadata and the Parquet table; rename into place.

Steps 1, 2, 4 and 5 run on the executor (`kit.scale.executors`): in this process or on Dask workers,
which then read the image and write the output themselves (both must be on storage they can reach).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from kit.errors import ConfigError, DataError
from kit.scale.executors import Executor, InProcess, open_executor
from kit.scale.intensity import intensity_ranges
from kit.scale.omezarr import LABEL_NAME, OmeZarrOutput
from kit.scale.plan import Block, BlockPlan, Region
from kit.scale.sources import ImageSource, open_image
from kit.scale.stitch import BlockProposals, SeamObject, arbitrate, assign_labels, paint_core, propose

MAX_CHUNK = 1024


@dataclass(frozen=True)
class BlockSettings:
    """Block size (core side), halo and network context in pixels (see `kit.config.InferenceConfig`)."""

    block: int
    halo: int
    context: int

    @classmethod
    def for_model(
        cls, model: Any, *, block: int | None = None, halo: int | None = None, context: int | None = None
    ) -> BlockSettings:
        """Settings from the model's `inference_configs` (the `inference` sections of its configs; the
        widest halo and context among them; `kit.config.InferenceConfig`'s defaults for a model without),
        each replaced by the argument when given."""
        from kit.config import InferenceConfig

        configs = list(getattr(model, "inference_configs", None) or [InferenceConfig()])
        return cls(
            block if block is not None else max(i.block for i in configs),
            halo if halo is not None else max(i.overlap if i.halo is None else i.halo for i in configs),
            context
            if context is not None
            else max(i.overlap // 2 if i.context is None else i.context for i in configs),
        )

    @property
    def margin(self) -> int:
        """How far outside its core a block still proposes a nucleus's centre (`kit.scale.stitch`)."""
        return self.halo // 4

    def chunk_and_block(self) -> tuple[int, int]:
        """(output chunk side, core side): cores are whole chunks, so each chunk has one writer."""
        if self.block <= MAX_CHUNK:
            return self.block, self.block
        chunk = MAX_CHUNK if self.block % MAX_CHUNK == 0 else MAX_CHUNK // 2
        return chunk, -(-self.block // chunk) * chunk


@dataclass
class BlockwiseResult:
    """A block-wise prediction: the level-0 label array (zarr; int32, 0 = background, 1..N), where it was
    written (None: in memory), the instance table, and what it took."""

    labels: Any
    path: str | None
    table: pd.DataFrame
    output: OmeZarrOutput
    shape: tuple[int, int]
    blocks: int
    duplicates: int
    too_large: int
    seconds: float
    workers: int

    @property
    def n_instances(self) -> int:
        return len(self.table)

    @property
    def pixels(self) -> int:
        return self.shape[0] * self.shape[1]


def predict_large(
    model: Any,
    image: Any,
    out: Any = None,
    *,
    block: int | None = None,
    halo: int | None = None,
    context: int | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    executor: Executor | None = None,
    progress: bool = True,
) -> BlockwiseResult:
    """`predict_blockwise` with the model's own block settings (`BlockSettings.for_model`, overridden by
    `block`, `halo`, `context`), on `executor` or on the one `workers` / `scheduler` open
    (`open_executor`; in this process by default). What `Segmenter.predict_blocks` calls."""
    settings = BlockSettings.for_model(model, block=block, halo=halo, context=context)
    if executor is not None:
        if workers is not None or scheduler is not None:
            raise ConfigError("give an executor or workers/scheduler, not both")
        return predict_blockwise(model, image, out, settings=settings, executor=executor, progress=progress)
    with open_executor(workers, scheduler) as opened:
        return predict_blockwise(model, image, out, settings=settings, executor=opened, progress=progress)


def predict_blockwise(
    model: Any,
    image: Any,
    out: Any = None,
    *,
    settings: BlockSettings,
    executor: Executor | None = None,
    progress: bool = True,
    name: str = LABEL_NAME,
) -> BlockwiseResult:
    """Predict `image` (a path or an array, `kit.scale.sources.open_image`) block by block with `model` and
    write the OME-Zarr result to `out` (None: in memory); see the module docstring."""
    from tqdm.auto import tqdm

    started = time.perf_counter()
    executor = executor or InProcess()
    source = open_image(image)
    remote = not isinstance(executor, InProcess)
    if remote and (source.path is None or out is None):
        raise ConfigError(
            "a Dask cluster reads the image and writes the result itself: give the image as a Zarr, TIFF "
            "or PNG path and an output path (in-memory arrays are predicted in this process)"
        )
    chunk, block = settings.chunk_and_block()
    plan = BlockPlan(source.shape, block, settings.halo, settings.context)
    blocks = plan.blocks()
    ranges = None
    if len(blocks) > 1:
        ranges = intensity_ranges(
            source, [b.core for b in blocks], mapper=lambda fn, items: (r for _, r in executor.map(fn, items))
        )
    output = OmeZarrOutput.create(
        out, source.shape, chunk=chunk, dtype=source.dtype, channels=source.channels, name=name
    )
    try:
        proposals: list[BlockProposals] = []
        predict = partial(_predict_block, source, output, ranges, settings.halo, settings.margin)
        bar = tqdm(
            total=len(blocks), desc=f"blocks of {source.name}"[-60:], unit="block", disable=not progress
        )
        with bar:
            for _, found in executor.map(predict, blocks, model=model):
                proposals.append(found)
                bar.update(1)
        labelling = assign_labels(proposals, arbitrate(o for p in proposals for o in p.seam))
        seam = _seam_by_block(plan, labelling.seam)
        finish = [(b, labelling.luts[b.index], seam.get(b.index, [])) for b in blocks]
        for _ in executor.map(partial(_finish_block, output), finish):
            pass
        for level in range(1, len(output.level_shapes())):
            output.create_level(level)
            for _ in executor.map(partial(_downsample, output, level), _level_regions(output, level, block)):
                pass
        path = output.finish(labelling.table)
    except BaseException:
        output.discard()
        raise
    return BlockwiseResult(
        labels=output.labels(0),
        path=path,
        table=labelling.table,
        output=output,
        shape=source.shape,
        blocks=len(blocks),
        duplicates=labelling.duplicates,
        too_large=labelling.too_large,
        seconds=time.perf_counter() - started,
        workers=executor.workers,
    )


def _predict_block(
    source: ImageSource,
    output: OmeZarrOutput,
    ranges: dict[int, tuple[float, float]] | None,
    halo: int,
    margin: int,
    model: Any,
    block: Block,
) -> BlockProposals:
    """Step 2 of the module docstring for one block (runs on the executor)."""
    y0, y1, x0, x1 = block.read
    pixels = source.read(block.read)
    seg = (
        model.predict(pixels, details=True)
        if ranges is None
        else model.predict(pixels, details=True, intensity_ranges=ranges)
    )
    labels = np.asarray(seg.labels)
    if labels.shape != (y1 - y0, x1 - x0):
        raise DataError(
            f"{source.name}: the model returned labels of shape {labels.shape} for a block of {pixels.shape[:2]}"
        )
    wy0, wy1, wx0, wx1 = block.window
    window = labels[wy0 - y0 : wy1 - y0, wx0 - x0 : wx1 - x0]
    values = seg.instances() if hasattr(seg, "instances") else None
    found, core_labels = propose(block, window, halo, margin, values)
    output.write_labels(block.core, core_labels)
    cy0, cy1, cx0, cx1 = block.core
    output.write_image(block.core, pixels[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0])
    return found


def _finish_block(output: OmeZarrOutput, task: tuple[Block, np.ndarray, list[SeamObject]]) -> None:
    """Step 4 of the module docstring for one block (runs on the executor)."""
    block, lut, seam = task
    output.write_labels(block.core, paint_core(block, output.read_labels(block.core), lut, seam))


def _downsample(output: OmeZarrOutput, level: int, region: Region) -> None:
    output.downsample(level, region)


def _seam_by_block(plan: BlockPlan, seam: list[SeamObject]) -> dict[int, list[SeamObject]]:
    """The kept seam objects whose box reaches into each block's core."""
    out: dict[int, list[SeamObject]] = {}
    cols = plan.grid[1]
    for obj in seam:
        y0, y1, x0, x1 = obj.box
        for r in range(y0 // plan.block, (y1 - 1) // plan.block + 1):
            for c in range(x0 // plan.block, (x1 - 1) // plan.block + 1):
                out.setdefault(r * cols + c, []).append(obj)
    return out


def _level_regions(output: OmeZarrOutput, level: int, block: int) -> list[Region]:
    """Regions of pyramid level `level` of about a block each, made of whole chunks."""
    h, w = output.level_shapes()[level]
    step = max(output.chunk, block)
    return [(y, min(y + step, h), x, min(x + step, w)) for y in range(0, h, step) for x in range(0, w, step)]
