"""kit.scale: block plan, stitching (exact on constructed cases), the whole image's normalisation, lazy
readers and their errors, the OME-Zarr + Parquet output, and the Dask executors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
import zarr
from scale_models import ThresholdModel, TruthModel
from skimage.draw import disk, ellipse
from skimage.measure import regionprops

from kit.data.normalize import model_values
from kit.data.synthetic import generate_synthetic
from kit.errors import DataError
from kit.scale import BlockPlan, BlockSettings, intensity_ranges, open_image, predict_blockwise, read_table


def same_instances(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two label images hold the same instances (the same pixel sets), whatever their ids."""
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return pairs.shape[1] == len(np.unique(a)) == len(np.unique(b))


def blockwise(model, image, out=None, **settings) -> tuple[np.ndarray, object]:
    result = predict_blockwise(model, image, out, settings=BlockSettings(**settings), progress=False)
    return np.asarray(result.labels[:]), result


def constructed_truth() -> np.ndarray:
    """Nuclei on the seams of 64-px blocks: on edges, on corners where four blocks meet, two nuclei that
    touch exactly on a seam, an elongated one along a seam, and nuclei on the image's own corners."""
    truth = np.zeros((200, 260), np.int32)
    shapes = [
        disk((64, 64), 8),  # a corner of four blocks
        disk((128, 192), 9),  # another corner
        disk((64, 30), 6),  # a horizontal edge
        disk((30, 128), 7),  # a vertical edge
        disk((150, 128), 9),  # a vertical edge, lower
        disk((100, 64), 5),
        ellipse(128, 100, 4, 20),  # elongated along the seam y = 128
        disk((1, 1), 4),  # the image's corners
        disk((199, 259), 5),
        disk((199, 0), 3),
        disk((150, 30), 6),  # inside a block
        # left of the last seam (x = 256), centre within the margin: the last-but-one block's window
        # reaches the image border there, yet its core's right edge is still a seam
        disk((30, 252), 3),
    ]
    for k, (rr, cc) in enumerate(shapes, start=1):
        keep = (rr >= 0) & (rr < truth.shape[0]) & (cc >= 0) & (cc < truth.shape[1])
        truth[rr[keep], cc[keep]] = k
    truth[56:64, 100:110] = 20  # two nuclei touching on the seam y = 64
    truth[64:72, 100:110] = 21
    truth[100:110, 186:192] = 22  # and on the seam x = 192
    truth[100:110, 192:199] = 23
    return truth


def test_block_cores_tile_the_image_and_reads_start_on_the_stride_grid():
    plan = BlockPlan((300, 410), 64, 40, 10)  # the halo reaches the border from the last-but-one blocks
    blocks = plan.blocks()
    cover = np.zeros((300, 410), int)
    for b in blocks:
        y0, y1, x0, x1 = b.core
        cover[y0:y1, x0:x1] += 1
        wy0, wy1, wx0, wx1 = b.window
        assert (wy0, wy1, wx0, wx1) == (
            max(0, y0 - 40),
            min(300, y1 + 40),
            max(0, x0 - 40),
            min(410, x1 + 40),
        )
        assert b.cut == (wy0 > 0, wy1 < 300, wx0 > 0, wx1 < 410)
        ry0, ry1, rx0, rx1 = b.read
        assert ry0 % 32 == rx0 % 32 == 0 and ry0 <= max(0, wy0 - 10) and rx0 <= max(0, wx0 - 10)
        assert (ry1, rx1) == (min(300, wy1 + 10), min(410, wx1 + 10))
        assert b.seams == (y0 > 0, y1 < 300, x0 > 0, x1 < 410)
    assert (cover == 1).all() and len(blocks) == len(plan) == 5 * 7


@pytest.mark.parametrize(("block", "halo"), [(64, 24), (64, 40), (96, 20)])
def test_nuclei_on_block_edges_and_corners_come_out_exactly_as_the_truth(block, halo):
    truth = constructed_truth()
    assert len(np.unique(truth)) - 1 == 16
    labels, result = blockwise(TruthModel(), truth, block=block, halo=halo, context=0)
    assert same_instances(truth, labels)
    assert result.n_instances == 16 and labels.max() == 16  # global labels 1..N
    assert result.duplicates > 0  # seam nuclei were seen by two blocks and kept once
    assert result.too_large == 0
    assert result.blocks == len(BlockPlan(truth.shape, block, halo, 0))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_synthetic_clusters_of_touching_nuclei_stitch_exactly(seed):
    truth = generate_synthetic(1, seed=seed, size=(230, 290), styles=["fluorescence"])[0].labels
    assert truth.max() > 10
    labels, result = blockwise(TruthModel(), truth, block=64, halo=40, context=8)
    assert same_instances(truth, labels)
    assert result.n_instances == truth.max()


def test_a_nucleus_larger_than_the_halo_is_left_out_and_counted():
    truth = np.zeros((128, 128), np.int32)
    rr, cc = disk((64, 60), 30)
    truth[rr, cc] = 1
    rr, cc = disk((20, 20), 5)
    truth[rr, cc] = 2
    labels, result = blockwise(TruthModel(), truth, block=64, halo=16, context=0)
    assert result.too_large == 1
    assert result.n_instances == 1 and same_instances(np.where(truth == 2, 2, 0), labels)


def test_the_instance_table_describes_the_label_image():
    truth = constructed_truth()
    labels, result = blockwise(TruthModel(), truth, block=64, halo=24, context=0)
    table = result.table
    assert list(table["label"]) == list(range(1, 17))
    for region in regionprops(labels):
        row = table.iloc[region.label - 1]
        assert row["area"] == region.area
        assert (row["bbox_y0"], row["bbox_x0"], row["bbox_y1"], row["bbox_x1"]) == region.bbox
        assert row[["centroid_y", "centroid_x"]].to_numpy() == pytest.approx(region.centroid)


def test_blockwise_equals_whole_image_with_the_whole_images_normalisation():
    # ThresholdModel thresholds the *normalised* image: equal results need every block normalised with
    # the whole image's percentiles, not its own.
    sample = generate_synthetic(1, seed=3, size=(300, 410), styles=["fluorescence"])[0]
    image = sample.image.astype(np.uint16) * 200 + 7
    whole = ThresholdModel().predict(image)
    assert whole.max() > 100
    labels, result = blockwise(ThresholdModel(), image, block=64, halo=40, context=0)
    assert same_instances(whole, labels)
    assert result.n_instances == whole.max()


@pytest.mark.parametrize(
    ("dtype", "shape"),
    [(np.uint8, (97, 131)), (np.uint16, (64, 80, 3)), (np.int16, (50, 70, 4)), (np.uint16, (40, 33, 1))],
)
def test_intensity_ranges_are_numpys_percentiles_of_the_whole_image(dtype, shape):
    rng = np.random.default_rng(0)
    high = 255 if dtype == np.uint8 else 4000
    image = rng.integers(-300 if dtype == np.int16 else 0, high, size=shape).astype(dtype)
    source = open_image(image)
    ranges = intensity_ranges(source, [b.core for b in BlockPlan(source.shape, 32, 0, 0).blocks()])
    for channels in (1, 3):
        expected = np.percentile(model_values(image, channels), [1.0, 99.8])
        assert ranges[channels] == tuple(expected)
    assert ranges[1] != ranges[3] or shape[-1] not in (3, 4)  # RGB → grey is the channel mean


def test_readers_give_the_same_region_from_every_format(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 4000, size=(150, 170, 3)).astype(np.uint16)
    grey = rgb[:, :, 0]
    tifffile.imwrite(tmp_path / "tiled.tif", rgb, tile=(64, 64), photometric="rgb")
    tifffile.imwrite(tmp_path / "cyx.ome.tif", np.moveaxis(rgb, 2, 0), metadata={"axes": "CYX"})
    zarr.save_array(str(tmp_path / "plain.zarr"), grey)
    from ome_zarr.writer import write_image

    write_image(np.moveaxis(rgb, 2, 0)[None, :, None], str(tmp_path / "img.ome.zarr"), axes="tczyx")
    from kit.fileio import write_png

    write_png(tmp_path / "img.png", rgb)
    region = (20, 90, 30, 161)
    for name, expected in [
        ("tiled.tif", rgb),
        ("cyx.ome.tif", rgb),
        ("img.ome.zarr", rgb),
        ("img.png", rgb),
        ("plain.zarr", grey),
    ]:
        source = open_image(tmp_path / name)
        assert source.shape == (150, 170), name
        np.testing.assert_array_equal(source.read(region), expected[20:90, 30:161], err_msg=name)


def test_bad_zarr_inputs_are_one_line_errors_naming_the_path(tmp_path):
    zarr.open_group(str(tmp_path / "empty.zarr"), mode="w")
    zarr.save_array(str(tmp_path / "stack.zarr"), np.zeros((5, 40, 40, 40), np.uint8))
    from ome_zarr.writer import write_image

    write_image(np.zeros((3, 1, 1, 32, 32), np.uint8), str(tmp_path / "series.ome.zarr"), axes="tczyx")
    cases = {
        "missing.zarr": "no such file or folder",
        "empty.zarr": "without OME-Zarr 'multiscales' metadata and holds no array",
        "stack.zarr": "expected a 2-D array",
        "series.ome.zarr": "time series and z-stacks are not supported",
    }
    for name, problem in cases.items():
        with pytest.raises(DataError) as caught:
            open_image(tmp_path / name)
        message = str(caught.value)
        assert message.startswith(str(tmp_path / name)) and problem in message, message
        assert "\n" not in message


def test_the_ome_zarr_result_reads_back_with_ome_zarr(tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Multiscales, Reader

    truth = constructed_truth()
    image = np.stack([truth * 100, truth * 50, np.full_like(truth, 7)], axis=2).astype(np.uint16)
    tifffile.imwrite(tmp_path / "in.tif", image, tile=(64, 64), photometric="rgb")

    class FromRed(TruthModel):  # the red channel holds the truth × 100
        def predict(self, image, **kwargs):
            return super().predict(image[:, :, 0] // 100, **kwargs)

    labels, result = blockwise(
        FromRed(), tmp_path / "in.tif", tmp_path / "out.ome.zarr", block=64, halo=24, context=0
    )
    assert result.path == str(tmp_path / "out.ome.zarr")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "out.ome.zarr"]  # no temporary left
    nodes = list(Reader(parse_url(str(tmp_path / "out.ome.zarr")))())
    image_node = nodes[0]
    label_node = next(n for n in nodes if any(isinstance(s, Label) for s in n.specs))
    assert any(isinstance(s, Multiscales) for s in image_node.specs)
    np.testing.assert_array_equal(np.asarray(image_node.data[0]), np.moveaxis(image, 2, 0))
    assert [a["name"] for a in image_node.metadata["axes"]] == ["c", "y", "x"]
    read = np.asarray(label_node.data[0])
    assert same_instances(truth, read) and np.array_equal(read, labels)
    assert [a["name"] for a in label_node.metadata["axes"]] == ["y", "x"]
    assert [tuple(d.shape) for d in label_node.data] == [(200, 260), (100, 130), (50, 65), (25, 33)]
    np.testing.assert_array_equal(np.asarray(label_node.data[1]), read[::2, ::2])
    attrs = dict(zarr.open_group(str(tmp_path / "out.ome.zarr/labels/nuclei"), mode="r").attrs)
    assert attrs["image-label"]["source"] == {"image": "../../"}
    assert attrs["multiscales"][0]["version"] == "0.4"
    assert dict(zarr.open_group(str(tmp_path / "out.ome.zarr/labels"), mode="r").attrs)["labels"] == [
        "nuclei"
    ]
    table = read_table(tmp_path / "out.ome.zarr")
    pd.testing.assert_frame_equal(table, result.table)
    assert len(table) == 16


def test_a_failed_run_leaves_no_result_under_the_final_name(tmp_path):
    class Broken(TruthModel):
        calls = 0

        def predict(self, image, **kwargs):
            Broken.calls += 1
            if Broken.calls == 3:
                raise DataError("the model broke")
            return super().predict(image, **kwargs)

    with pytest.raises(DataError, match="the model broke"):
        blockwise(Broken(), constructed_truth(), tmp_path / "out.ome.zarr", block=64, halo=24, context=0)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("tile", "overlap", "multiple"), [(512, 64, 32), (256, 32, 8), (512, 128, 32), (64, 8, 32)]
)
def test_tiles_start_on_the_network_stride_and_still_cover_the_image(tile, overlap, multiple):
    # Block-wise and whole-image prediction agree only if every tile sees the image on the network's
    # sampling grid (kit.inference.tiling's docstring has the measurement).
    from kit.inference.tiling import tile_starts

    for length in range(multiple, 3000, multiple):
        starts = tile_starts(length, tile, overlap, multiple)
        assert starts[0] == 0 and starts[-1] == max(0, length - tile)
        assert all(s % multiple == 0 for s in starts), (length, starts)
        gaps = np.diff(starts)
        assert (gaps <= tile - 2 * (overlap // 4)).all(), (length, starts)  # blended weights stay positive
        if (tile, overlap) in ((512, 64), (256, 32)):  # the shipped settings: no extra tile
            assert len(starts) == len(tile_starts(length, tile, overlap)), length
