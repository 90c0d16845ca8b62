"""`kit evaluate --by style`: the score per style cluster, marking styles never trained on."""

from __future__ import annotations

import pandas as pd
import pytest

from kit.errors import DataError
from kit.stages.evaluate import breakdown


def test_breakdown_by_style_means_and_training_counts() -> None:
    manifest = pd.DataFrame(
        {
            "id": ["a", "b", "c", "d", "t1", "t2", "t3"],
            "split": ["train", "train", "train", "validation", "test", "test", "test"],
            "style": [0, 0, 1, 1, 0, 1, 3],
        }
    )
    per_image = pd.DataFrame({"image_id": ["t1", "t2", "t3"], "score": [0.8, 0.6, 0.2]})
    table = breakdown(per_image, manifest, "style", n_bootstrap=100).set_index("style")
    assert table.loc[0, "map"] == pytest.approx(0.8) and table.loc[3, "map"] == pytest.approx(0.2)
    assert table["images"].tolist() == [1, 1, 1]
    assert table.loc[3, "train_images"] == 0 and table.loc[0, "train_images"] == 2
    assert table.loc[1, "ci_low"] == pytest.approx(0.6) == table.loc[1, "ci_high"]


def test_breakdown_by_an_unknown_column_names_the_choices() -> None:
    manifest = pd.DataFrame({"id": ["a"], "split": ["test"], "style": [0]})
    with pytest.raises(DataError, match=r"no column 'stain'.*style"):
        breakdown(pd.DataFrame({"image_id": ["a"], "score": [1.0]}), manifest, "stain")
