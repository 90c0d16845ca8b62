"""Scale: images of any size and any number of images, in this process or on a Dask cluster.

- `predict_blockwise` / `predict_large`: one large image (OME-Zarr, Zarr, TIFF, PNG or an array) cut
  into blocks with a halo and a context, predicted by any kit model object, stitched so every nucleus
  appears once under one global label, written as an OME-Zarr label image plus a Parquet instance table
  (`kit.scale.blockwise`, `plan`, `stitch`, `omezarr`);
- `open_image`: lazy readers (`kit.scale.sources`); `intensity_ranges`: the whole image's normalisation
  levels, block by block (`kit.scale.intensity`);
- `open_executor`: where blocks and images run, in-process or Dask (`kit.scale.executors`).

A building block: it never imports MLflow; the predict stage records what it did.
"""

from kit.scale.blockwise import BlockSettings, BlockwiseResult, predict_blockwise, predict_large
from kit.scale.executors import Executor, InProcess, open_executor
from kit.scale.intensity import intensity_ranges
from kit.scale.omezarr import LABEL_NAME, read_table
from kit.scale.plan import Block, BlockPlan
from kit.scale.sources import ImageSource, open_image, read_whole

__all__ = [
    "LABEL_NAME",
    "Block",
    "BlockPlan",
    "BlockSettings",
    "BlockwiseResult",
    "Executor",
    "ImageSource",
    "InProcess",
    "intensity_ranges",
    "open_executor",
    "open_image",
    "predict_blockwise",
    "predict_large",
    "read_table",
    "read_whole",
]
