"""The seeds' other model families as kit models (issue 23): the classical pipeline's fit picks the better
of two constructed settings, the pixel forest learns texture that intensity cannot tell apart, DeepCell's
network sees exactly a 31×31 window, fitted state survives kit's checkpoint format, and a fold is fitted
on its whole training images plus `data.extra`. Everything end to end through the CLI (train, predict,
evaluate, compare, ensemble, register, autolabel) is in `test_families_cli.py`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import draw

from kit.config import ExperimentConfig
from kit.inference.postprocess import instances_from_probs
from kit.metrics import dsb_score
from kit.models import create_model, load_checkpoint, save_checkpoint
from kit.training.fitting import state_evaluator


def _discs(shape, centres, radius) -> np.ndarray:
    labels = np.zeros(shape, dtype=np.int32)
    for k, centre in enumerate(centres, start=1):
        rr, cc = draw.disk(centre, radius, shape=shape)
        labels[rr, cc] = k
    return labels


def _grid_of_discs(rng: np.random.Generator, shape=(96, 96), radius=9) -> np.ndarray:
    """Separate discs on a jittered grid (never touching): a label image with 9 nuclei."""
    centres = [(r + rng.integers(-3, 4), c + rng.integers(-3, 4)) for r in (18, 48, 78) for c in (18, 48, 78)]
    return _discs(shape, centres, radius)


# --- classical ----------------------------------------------------------------------------------------


def test_classical_fit_picks_the_better_of_two_settings() -> None:
    """Bright discs under strong pixel noise: without smoothing the threshold shatters every nucleus into
    specks; with sigma 2 it finds them. The fit must choose sigma 2, and the score it reports for its choice
    must be the better of the two states' scores."""
    rng = np.random.default_rng(0)
    images = []
    for _ in range(3):
        labels = _grid_of_discs(rng)
        image = np.where(labels > 0, 150.0, 60.0) + rng.normal(0, 55, labels.shape)
        images.append((np.clip(image, 0, 255).astype(np.uint8)[..., None], labels))
    model = create_model("classical", in_channels=1, sigmas=[2.0, 0.0], methods=["otsu"])
    evaluate = state_evaluator(ExperimentConfig(name="t"), images)

    chosen = model.fit(images, evaluate=evaluate)

    scores = {}
    for sigma in (0.0, 2.0):
        model.load_fitted_state({"sigma": sigma, "method": "otsu"})
        scores[sigma] = evaluate(model)["score"]
    assert scores[2.0] > 0.8 and scores[0.0] < 0.5, scores
    assert chosen["sigma"] == 2.0 and chosen["method"] == "otsu"
    assert chosen["score"] == pytest.approx(scores[2.0])


def test_classical_maps_split_two_touching_nuclei_and_invert_dark_ones() -> None:
    """Two overlapping discs make one blob with a neck: the distance-transform body has two cores, so the
    watershed gives two nuclei. The same picture as dark nuclei on a bright background (brightfield)
    gives the same instances with polarity "auto"."""
    from kit.models.classical import classical_maps

    truth = _discs((80, 120), [(40, 42)], 20)
    truth[_discs((80, 120), [(40, 78)], 20) > 0] = 2
    bright = np.where(truth > 0, 0.8, 0.1).astype(np.float32)[..., None]
    for image in (bright, 1.0 - bright):
        maps = classical_maps(image, sigma=1.0, method="otsu")
        labels = instances_from_probs(maps, ("body", "mask"), seed_threshold=0.7)
        assert labels.max() == 2
        assert dsb_score(truth, labels) > 0.7


# --- pixel forest ---------------------------------------------------------------------------------------


def _two_textures(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Nuclei as discs of a fine checkerboard (2 px squares) on a background of coarse random blocks
    (8 px): both made of the same two grey values, equally often, so neither a pixel's intensity nor the
    mean intensity tells them apart; only the scale of the texture does."""
    labels = _grid_of_discs(rng)
    yy, xx = np.mgrid[:96, :96]
    fine = ((yy // 2) + (xx // 2)) % 2 == 0
    coarse = rng.random((12, 12)) < 0.5
    bright = np.where(labels > 0, fine, coarse[yy // 8, xx // 8])
    image = np.where(bright, 180.0, 76.0) + rng.normal(0, 3, labels.shape)
    return np.clip(image, 0, 255).astype(np.uint8)[..., None], labels


def test_pixel_forest_learns_a_two_texture_image(tmp_path) -> None:
    rng = np.random.default_rng(1)
    train = [_two_textures(rng) for _ in range(2)]
    image, truth = _two_textures(rng)
    inside = truth > 0
    bright = image[..., 0] > 128
    assert abs(bright[inside].mean() - bright[~inside].mean()) < 0.1  # a pixel's intensity tells nothing
    model = create_model("pixel_forest", in_channels=1, sigmas=[1.0, 2.0], samples_per_class=400, rounds=30)

    fitted = model.fit(train, evaluate=lambda m: {})

    assert fitted["train_pixel_accuracy"] > 0.9
    maps = model.predict_maps(image.astype(np.float32) / 255.0)
    foreground = maps[0] + maps[1]  # body + border
    assert np.mean(foreground[inside] > 0.5) > 0.9 and np.mean(foreground[~inside] < 0.5) > 0.9
    labels = instances_from_probs(maps, ("body", "border", "background"), min_size=20)
    assert labels.max() == 9 and dsb_score(truth, labels) > 0.5

    # The fitted forest is the module's state: kit's checkpoint format carries it.
    path = save_checkpoint(tmp_path / "forest.pt", model, {})
    loaded, _, _ = load_checkpoint(path)
    np.testing.assert_array_equal(loaded.predict_maps(image.astype(np.float32) / 255.0), maps)


def test_an_unfitted_pixel_forest_refuses_to_predict() -> None:
    model = create_model("pixel_forest", in_channels=1)
    with pytest.raises(RuntimeError, match="has not been fitted"):
        model(torch.zeros(1, 1, 16, 16))


# --- deepcell -------------------------------------------------------------------------------------------


def test_deepcell_output_pixel_sees_exactly_a_31_pixel_window() -> None:
    model = create_model("deepcell", in_channels=1).eval()
    x = torch.rand(1, 1, 81, 81, requires_grad=True)
    model(x)[0, 0, 40, 40].backward()
    rows, cols = np.nonzero(x.grad[0, 0].abs().numpy())
    assert rows.max() - rows.min() + 1 == 31 and cols.max() - cols.min() + 1 == 31
    assert model.kit_cfg["receptive_field"] == 31 and model.kit_cfg["output_stride"] == 1
    assert model(torch.rand(2, 1, 37, 45)).shape == (2, 3, 37, 45)  # any size, full resolution


# --- fitting a fold -------------------------------------------------------------------------------------


def test_a_fold_fits_on_its_training_images_plus_extra_datasets(synthetic_src, tmp_path) -> None:
    import shutil

    from kit.config import ExtraData
    from kit.data.dataset import NucleiDataset
    from kit.training.fitting import fit_images

    extra = shutil.copytree(synthetic_src, tmp_path / "extra")
    dataset = NucleiDataset(synthetic_src)
    train_ids = dataset.ids("train", fold=1)
    cfg = ExperimentConfig(name="t", data={"channels": 1, "extra": [ExtraData(root=str(extra))]})

    images = fit_images(cfg, dataset, train_ids)

    n_extra = len(NucleiDataset(extra).ids("train"))
    assert len(images) == len(train_ids) + n_extra and n_extra > 0
    first = dataset.load(train_ids[0])
    assert images[0][0].shape == (*first.labels.shape, 1) and images[0][0].dtype == np.uint8
    np.testing.assert_array_equal(images[0][1], first.labels)
