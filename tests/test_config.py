"""Experiment configs: loading by name or path, overrides, validation errors, YAML round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kit.config import ExperimentConfig, available_experiments, config_from_dict, load_experiment
from kit.errors import ConfigError

REPO_EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def _write(tmp_path: Path, name: str, data: dict) -> Path:
    d = tmp_path / "experiments"
    d.mkdir(exist_ok=True)
    path = d / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_every_shipped_experiment_validates():
    names = available_experiments(REPO_EXPERIMENTS)
    assert names, "experiments/ must ship at least one recipe"
    for name in names:
        cfg = load_experiment(name, directory=REPO_EXPERIMENTS)
        assert cfg.name == name


def test_load_by_name_and_by_path_give_the_same_config(tmp_path):
    path = _write(tmp_path, "mine", {"training": {"lr": 0.01}})
    by_name = load_experiment("mine", directory=tmp_path / "experiments")
    by_path = load_experiment(str(path))
    assert by_name == by_path
    assert by_name.name == "mine" and by_name.training.lr == 0.01


def test_overrides_are_typed(tmp_path):
    _write(tmp_path, "mine", {})
    cfg = load_experiment(
        "mine",
        [
            "training.lr=1e-3",
            "training.folds=[0,2]",
            "model.pretrained=true",
            "model.params.decoder_attention=scse",
        ],
        directory=tmp_path / "experiments",
    )
    assert cfg.training.lr == pytest.approx(1e-3)
    assert cfg.training.folds == [0, 2]
    assert cfg.model.pretrained is True
    assert cfg.model.params == {"decoder_attention": "scse"}


def test_unknown_key_names_the_key_and_suggests(tmp_path):
    _write(tmp_path, "mine", {})
    with pytest.raises(ConfigError, match=r"unknown key 'training.lrr'.*did you mean 'lr'"):
        load_experiment("mine", ["training.lrr=3"], directory=tmp_path / "experiments")


def test_bad_value_names_the_key_and_the_file(tmp_path):
    path = _write(tmp_path, "mine", {"training": {"batch_size": "eight"}})
    with pytest.raises(ConfigError) as err:
        load_experiment(str(path))
    assert str(path) in str(err.value) and "training.batch_size" in str(err.value)


def test_bad_value_from_override_is_rejected(tmp_path):
    _write(tmp_path, "mine", {})
    with pytest.raises(ConfigError, match=r"inference\.tta"):
        load_experiment("mine", ["inference.tta=d8"], directory=tmp_path / "experiments")


def test_malformed_override_is_rejected(tmp_path):
    _write(tmp_path, "mine", {})
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        load_experiment("mine", ["training.lr"], directory=tmp_path / "experiments")


def test_unknown_experiment_lists_known_and_suggests(tmp_path):
    _write(tmp_path, "unet_r34", {})
    with pytest.raises(ConfigError, match=r"unknown experiment 'unet_r43'.*Did you mean 'unet_r34'"):
        load_experiment("unet_r43", directory=tmp_path / "experiments")


def test_missing_file_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_experiment(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("training: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_experiment(str(bad))


def test_resolved_config_round_trips_through_yaml():
    cfg = config_from_dict(
        {
            "name": "x",
            "training": {"epochs": 3},
            "augmentation": [{"name": "D4"}, {"name": "CLAHE", "p": 0.3, "clip_limit": 2.0}],
        }
    )
    again = ExperimentConfig.model_validate(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg
    assert again.augmentation[1].model_extra == {"clip_limit": 2.0}


def test_flat_params_are_strings_keyed_by_section():
    cfg = config_from_dict({"name": "x", "augmentation": [{"name": "D4"}]})
    flat = cfg.flat_params()
    assert flat["training.lr"] == str(cfg.training.lr)
    assert flat["augmentation"] == "D4"
    assert all(isinstance(v, str) for v in flat.values())


# -- inheritance (`base:`) ---------------------------------------------------------------------------------


def test_base_chain_then_child_then_set_with_lists_replaced(tmp_path):
    d = tmp_path / "experiments"
    _write(
        tmp_path,
        "grand",
        {
            "name": "grand",  # a base's own name, even written out, stays its own
            "description": "grand",
            "training": {"lr": 0.1, "epochs": 5, "folds": [0, 1, 2]},
            "model": {"params": {"a": 1, "b": 2}},
            "augmentation": [{"name": "D4"}, {"name": "CLAHE"}],
        },
    )
    _write(tmp_path, "parent", {"base": "grand", "training": {"lr": 0.2, "batch_size": 3}})
    _write(
        tmp_path,
        "child",
        {
            "base": "parent",
            "training": {"epochs": 7, "folds": [2]},
            "model": {"params": {"b": 20}},
            "augmentation": [{"name": "Transpose"}],
        },
    )
    cfg = load_experiment("child", ["training.batch_size=9"], directory=d)
    assert cfg.name == "child"  # never inherited
    assert cfg.description == "grand"
    assert (cfg.training.lr, cfg.training.epochs, cfg.training.batch_size) == (0.2, 7, 9)
    assert cfg.training.folds == [2]  # a list replaces the base's list
    assert cfg.model.params == {"a": 1, "b": 20}  # a mapping merges key by key
    assert [s.name for s in cfg.augmentation] == ["Transpose"]
    # the middle of the chain resolves the same way on its own
    parent = load_experiment("parent", directory=d)
    assert (parent.name, parent.training.lr, parent.training.epochs) == ("parent", 0.2, 5)
    assert [s.name for s in parent.augmentation] == ["D4", "CLAHE"]


def test_base_path_is_relative_to_the_file_and_names_fall_back_to_experiments(tmp_path):
    d = tmp_path / "experiments"
    _write(tmp_path, "recipe", {"training": {"lr": 0.05, "epochs": 3}})
    other = tmp_path / "elsewhere" / "deep"
    other.mkdir(parents=True)
    (other / "by_path.yaml").write_text("base: ../../experiments/recipe.yaml\ntraining: {epochs: 4}\n")
    (other / "by_name.yaml").write_text("base: recipe\ntraining: {epochs: 6}\n")
    by_path = load_experiment(str(other / "by_path.yaml"), directory=d)
    by_name = load_experiment(str(other / "by_name.yaml"), directory=d)
    assert (by_path.name, by_path.training.lr, by_path.training.epochs) == ("by_path", 0.05, 4)
    assert (by_name.name, by_name.training.lr, by_name.training.epochs) == ("by_name", 0.05, 6)


@pytest.mark.parametrize(
    "files, start, cycle",
    [
        ({"a": "b", "b": "c", "c": "a"}, "a", "a.yaml → .*b.yaml → .*c.yaml → .*a.yaml"),
        ({"solo": "solo"}, "solo", "solo.yaml → .*solo.yaml"),
        ({"x": "y", "y": "z", "z": "y"}, "x", "y.yaml → .*z.yaml → .*y.yaml"),
    ],
)
def test_an_inheritance_cycle_is_one_line_naming_the_files(tmp_path, files, start, cycle):
    for name, base in files.items():
        _write(tmp_path, name, {"base": base})
    with pytest.raises(ConfigError, match=f"inherit in a cycle \\(.*{cycle}\\)") as err:
        load_experiment(start, directory=tmp_path / "experiments")
    assert "\n" not in str(err.value)


def test_a_missing_base_is_one_line_naming_the_child(tmp_path):
    d = tmp_path / "experiments"
    _write(tmp_path, "unet_r34", {})
    child = _write(tmp_path, "child", {"base": "unet_r43"})
    with pytest.raises(
        ConfigError, match=r"child.yaml: base: unknown experiment 'unet_r43'.*'unet_r34'"
    ) as err:
        load_experiment("child", directory=d)
    assert "\n" not in str(err.value) and str(child) in str(err.value)
    _write(tmp_path, "by_path", {"base": "../nowhere/recipe.yaml"})
    with pytest.raises(ConfigError, match=r"by_path.yaml: base experiment file .*recipe.yaml does not exist"):
        load_experiment("by_path", directory=d)
    _write(tmp_path, "not_a_name", {"base": ["unet_r34"]})
    with pytest.raises(ConfigError, match=r"not_a_name.yaml: `base:` must be an experiment name"):
        load_experiment("not_a_name", directory=d)
