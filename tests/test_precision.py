"""Precision and memory format (`kit.models.precision`): `auto` follows the device's bfloat16 support,
the configured precision and memory format reach the network in training and prediction (CPU included),
weights and probability maps stay float32, a bf16-trained checkpoint predicts in fp32 like in bf16, the
choice is logged on train and predict runs, and configs and checkpoints that still say `training.amp`
load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import FAST_OVERRIDES, NO_MODEL, install_dataset

from kit.config import config_from_dict, load_experiment
from kit.data.dataset import NucleiDataset
from kit.errors import ConfigError
from kit.inference.segmenter import Segmenter
from kit.metrics import dsb_score
from kit.models import build_model
from kit.models.checkpoint import load_checkpoint, save_checkpoint
from kit.models.precision import ComputeMode, resolve_precision
from kit.training.data import fold_data
from kit.training.distributed import DistContext
from kit.training.trainer import Trainer

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def _trainer(cfg, model, data, work_dir) -> Trainer:
    """A single-process CPU trainer of `model` on `data`'s crops, without validation or progress."""
    return Trainer(
        cfg,
        model,
        data.train_set,
        None,
        [],
        work_dir=work_dir,
        device=CPU,
        dist=DistContext(),
        progress=False,
    )


def _cpu_flags(monkeypatch: pytest.MonkeyPatch, **flags: bool) -> None:
    """Pretend the CPU reports exactly `flags` (e.g. avx512_bf16=True)."""
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"architecture": "x86_64", **flags})


def _cuda_bf16(monkeypatch: pytest.MonkeyPatch, supported: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: supported)


@pytest.mark.parametrize(
    ("flags", "requested", "expected"),
    [
        ({}, "auto", "fp32"),
        ({"avx2": True, "avx512_f": True}, "auto", "fp32"),  # AVX-512 without its bf16 extension
        ({"avx512_bf16": True}, "auto", "bf16"),
        ({"amx_bf16": True, "amx_tile": True}, "auto", "bf16"),
        ({}, "bf16", "bf16"),  # asked for explicitly: honoured, if slow
        ({"avx512_bf16": True}, "fp32", "fp32"),
        ({"avx512_bf16": True}, "fp16", "fp32"),  # float16 is emulated on CPUs: fp32 instead
    ],
)
def test_cpu_precision_follows_the_reported_capability(monkeypatch, flags, requested, expected) -> None:
    _cpu_flags(monkeypatch, **flags)
    assert resolve_precision(requested, CPU) == expected


@pytest.mark.parametrize(
    ("supported", "requested", "expected"),
    [(True, "auto", "bf16"), (False, "auto", "fp32"), (False, "fp16", "fp16"), (True, "fp32", "fp32")],
)
def test_cuda_precision_follows_bf16_support(monkeypatch, supported, requested, expected) -> None:
    _cpu_flags(monkeypatch)  # the CPU's flags must not matter on a GPU
    _cuda_bf16(monkeypatch, supported)
    assert resolve_precision(requested, CUDA) == expected


def test_unknown_precision_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown precision 'fp8'"):
        resolve_precision("fp8", CPU)
    with pytest.raises(ConfigError, match=r"training\.precision"):
        config_from_dict({"name": "x", "training": {"precision": "fp8"}})


# --------------------------------------------------------------------------------------------------
# what reaches the network


def _record_forward(model: torch.nn.Module) -> list[dict]:
    """Per forward call of `model`: the CPU autocast dtype in force (None when off), whether the input
    batch is channels-last, and the dtype and memory format of the first convolution's weight."""
    seen: list[dict] = []
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))

    def hook(_module, args) -> None:
        x = args[0]
        seen.append(
            {
                "autocast": torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None,
                "input_channels_last": isinstance(x, torch.Tensor)
                and x.is_contiguous(memory_format=torch.channels_last)
                and not x.is_contiguous(),
                "weight_dtype": conv.weight.dtype,
                "weight_channels_last": not conv.weight.is_contiguous(),
            }
        )

    model.register_forward_pre_hook(hook)
    return seen


@pytest.fixture(scope="module")
def tiny_data(synthetic_src):
    """unet_tiny's fold-0 data on the tiny synthetic set: (config overrides, FoldData)."""
    overrides = [f"data.root={synthetic_src}", *FAST_OVERRIDES]
    cfg = load_experiment(Path(__file__).parents[1] / "experiments" / "unet_tiny.yaml", overrides)
    return overrides, fold_data(cfg, NucleiDataset(synthetic_src), 0)


def _tiny_config(overrides: list[str], *more: str):
    return load_experiment(Path(__file__).parents[1] / "experiments" / "unet_tiny.yaml", [*overrides, *more])


@pytest.mark.parametrize(
    ("flags", "settings", "autocast", "channels_last"),
    [
        ({}, ("training.precision=bf16", "training.channels_last=true"), torch.bfloat16, True),
        ({}, ("training.precision=fp32", "training.channels_last=false"), None, False),
        ({"avx512_bf16": True}, ("training.precision=auto",), torch.bfloat16, True),
        ({}, ("training.precision=auto",), None, True),
    ],
)
def test_a_training_step_runs_the_configured_precision_and_format(
    tiny_data, tmp_path, monkeypatch, flags, settings, autocast, channels_last
) -> None:
    _cpu_flags(monkeypatch, **flags)
    overrides, data = tiny_data
    cfg = _tiny_config(overrides, *settings)
    model = build_model(cfg)
    seen = _record_forward(model)
    trainer = _trainer(cfg, model, data, tmp_path)
    data.train_set.set_epoch(0)
    loss, _ = trainer.task.loss(trainer.net, next(iter(trainer.loader)))
    assert loss.dtype == torch.float32  # the loss is computed in float32 under any autocast
    assert seen == [
        {
            "autocast": autocast,
            "input_channels_last": channels_last,
            "weight_dtype": torch.float32,  # master weights stay float32: autocast, not .half()
            "weight_channels_last": channels_last,
        }
    ]
    assert not trainer.scaler.is_enabled()  # loss scaling is for float16 only


@pytest.mark.parametrize(
    ("precision", "channels_last", "autocast"),
    [("bf16", True, torch.bfloat16), ("fp32", False, None), ("fp16", True, None)],  # fp16 on CPU: fp32
)
def test_prediction_runs_inference_precision_and_format(
    tiny_data, precision, channels_last, autocast
) -> None:
    overrides, data = tiny_data
    cfg = _tiny_config(
        overrides, f"inference.precision={precision}", f"inference.channels_last={channels_last}"
    )
    model = build_model(cfg).eval()
    seen = _record_forward(model)
    _, image, _ = data.val_images[0]
    out = Segmenter([model], cfg, device="cpu", tta="flips").predict(image, details=True)
    assert len(seen) == 4  # one forward per TTA copy
    assert {s["autocast"] for s in seen} == {autocast}
    assert {s["input_channels_last"] for s in seen} == {channels_last}
    assert {s["weight_channels_last"] for s in seen} == {channels_last}
    assert out.probs.dtype == np.float32 and out.labels.dtype == np.int32


def test_mask_rcnn_predicts_under_bf16_autocast(tiny_data) -> None:
    overrides, data = tiny_data
    cfg = load_experiment(
        Path(__file__).parents[1] / "experiments" / "maskrcnn_tiny.yaml",
        [*overrides, "inference.precision=bf16"],
    )
    model = build_model(cfg).eval()
    seen = _record_forward(model)
    _, image, _ = data.val_images[0]
    out = Segmenter([model], cfg, device="cpu").predict(image, details=True)
    assert [s["autocast"] for s in seen] == [torch.bfloat16]
    assert out.probs.dtype == np.float32 and out.labels.shape == image.shape[:2]


# --------------------------------------------------------------------------------------------------
# a bf16-trained checkpoint in fp32


def test_a_bf16_trained_checkpoint_predicts_in_fp32_like_in_bf16(tiny_data, tmp_path) -> None:
    """Tolerance: probabilities within 0.03 of each other (bfloat16 keeps 8 significant bits), label
    images matching at DSB score ≥ 0.9 (in practice identical up to a few border pixels)."""
    from kit.data.synthetic import generate_synthetic

    overrides, _ = tiny_data
    cfg = _tiny_config(
        overrides,
        "training.precision=bf16",
        "training.epochs=1",
        "training.max_steps_per_epoch=25",
        "data.samples_per_epoch=100",
        "training.lr=0.01",
    )
    data = fold_data(cfg, NucleiDataset(cfg.data.root), 0)  # 100 crops: 25 steps
    torch.manual_seed(0)
    trainer = _trainer(cfg, build_model(cfg), data, tmp_path)
    assert trainer.compute.precision == "bf16"
    trainer.fit()
    weights = torch.load(trainer.last_path, weights_only=True)["state_dict"]
    assert {v.dtype for v in weights.values() if v.is_floating_point()} == {torch.float32}

    sample = generate_synthetic(1, 5, size=(160, 160), styles=("fluorescence",), test_fraction=0)[0]
    out = {}
    for precision in ("fp32", "bf16"):
        model, _, _ = load_checkpoint(trainer.last_path)
        settings = _tiny_config(overrides, f"inference.precision={precision}")
        out[precision] = Segmenter([model], settings, device="cpu").predict(sample.image, details=True)
    assert out["fp32"].labels.max() >= 3  # the comparison is about real instances
    assert np.abs(out["fp32"].probs - out["bf16"].probs).max() < 0.03
    assert dsb_score(out["fp32"].labels, out["bf16"].labels) >= 0.9


# --------------------------------------------------------------------------------------------------
# `training.amp`, the key before `precision`


@pytest.mark.parametrize(("amp", "precision"), [(True, "auto"), (False, "fp32")])
def test_a_config_with_training_amp_still_loads(amp, precision, tmp_path) -> None:
    cfg = config_from_dict({"name": "old", "training": {"amp": amp, "lr": 0.01}})
    assert cfg.training.precision == precision
    assert "amp" not in cfg.to_dict()["training"]  # written back under the new key
    path = tmp_path / "old.yaml"
    path.write_text("training:\n  lr: 0.01\n")
    assert load_experiment(path, [f"training.amp={str(amp).lower()}"]).training.precision == precision
    with pytest.raises(ConfigError, match="amp"):
        config_from_dict({"name": "old", "training": {"amp": "sometimes"}})


def test_an_old_checkpoint_with_training_amp_loads_and_predicts(tiny_data, tmp_path) -> None:
    overrides, data = tiny_data
    cfg = _tiny_config(overrides)
    old = cfg.to_dict()
    del old["training"]["precision"]
    old["training"]["amp"] = True  # as every checkpoint written before `precision` holds it
    del old["inference"]["precision"], old["inference"]["channels_last"]
    path = save_checkpoint(tmp_path / "best.pt", build_model(cfg), old)
    segmenter = Segmenter.from_checkpoints(path, device="cpu")
    assert segmenter.config.training.precision == "auto"
    _, image, _ = data.val_images[0]
    assert segmenter.predict(image).shape == image.shape[:2]


# --------------------------------------------------------------------------------------------------
# logged on the runs


def test_train_and_predict_runs_log_the_precision_used(project, synthetic_src) -> None:
    from kit import tracking
    from kit.stages.predict import predict_experiment
    from kit.stages.train import train_experiment

    install_dataset(synthetic_src, project)
    cfg = load_experiment(
        "unet_tiny",
        [*FAST_OVERRIDES, NO_MODEL, "training.precision=bf16", "inference.precision=fp32"],
    )
    outcome = train_experiment(cfg, folds=[0], progress=False)
    client = tracking.configure().MlflowClient()
    params = client.get_run(outcome.folds[0].run_id).data.params
    assert params["training.precision_used"] == "bf16"
    assert params["inference.precision_used"] == "fp32"  # validation predicts as `kit predict` will
    assert params["training.channels_last_used"] == "true"

    cfg = load_experiment(
        "unet_tiny", [*FAST_OVERRIDES, "inference.precision=bf16", "inference.channels_last=false"]
    )
    run = client.get_run(predict_experiment(cfg, split="test", progress=False).run_id)
    assert run.data.params["inference.precision_used"] == "bf16"
    assert run.data.params["inference.channels_last_used"] == "false"


# --------------------------------------------------------------------------------------------------
# depthwise convolutions in float32 when training in bf16 on a CPU


def _depthwise_net() -> torch.nn.Sequential:
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 1),
        torch.nn.Conv2d(8, 8, 3, padding=1, groups=8),  # depthwise
        torch.nn.Conv2d(8, 8, 3, padding=1, groups=2),  # grouped, not depthwise
        torch.nn.Conv2d(8, 2, 1),
    )


def _output_dtypes(net: torch.nn.Module, x: torch.Tensor) -> list[torch.dtype]:
    dtypes: list[torch.dtype] = []
    for layer in net:
        layer.register_forward_hook(lambda _m, _a, out: dtypes.append(out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        net(x).float().sum().backward()
        assert torch.is_autocast_enabled("cpu")  # left only for the depthwise layer
    return dtypes


@pytest.mark.parametrize(
    ("precision", "expected"),
    [
        ("bf16", [torch.bfloat16, torch.float32, torch.bfloat16, torch.bfloat16]),
        ("fp32", [torch.bfloat16] * 4),  # not applied: the autocast here is the test's own
    ],
)
def test_training_in_bf16_on_a_cpu_keeps_depthwise_convolutions_float32(precision, expected) -> None:
    net = _depthwise_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    ComputeMode.resolve("cpu", precision, channels_last=True).prepare_training(net)
    x = torch.rand(2, 3, 16, 16)
    assert _output_dtypes(net, x) == expected
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in net.parameters())
    assert net.state_dict().keys() == before.keys()  # checkpoints unchanged
    assert not torch.is_autocast_enabled("cpu")
