"""MegaSR training on the CPU with a tiny checkpoint: loss, trainable split, exact resume, CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from megasr_tiny import one_thread
from PIL import Image
from safetensors.torch import load_file

from megasr.cli.main import main
from megasr.model.megasr.adapter import is_adapter_key
from megasr.model.megasr.checkpoint import (
    CONTROLNET_DIR,
    UNET_DIR,
    init_tiny_checkpoint,
)
from megasr.model.megasr.checkpoint_info import checkpoint_info
from megasr.model.training.megasr_config import TrainConfig, read_train_config
from megasr.model.training.megasr_trainer import MegaSRTrainer

CROP = 64


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "checkpoint"
    init_tiny_checkpoint(path, seed=0)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory, coffee) -> Path:
    """Four 96x96 crops of a real photograph."""
    folder = tmp_path_factory.mktemp("hr")
    for index, (top, left) in enumerate(((0, 0), (150, 200), (250, 400), (60, 480))):
        Image.fromarray(coffee[top : top + 96, left : left + 96]).save(folder / f"{index}.png")
    return folder


def _config(
    checkpoint: Path, photos: Path, out: Path, learning_rate: float = 1e-3, **training
) -> TrainConfig:
    data = {
        "model": {"checkpoint": str(checkpoint)},
        "data": {"hr": [str(photos)], "crop": CROP, "workers": 0},
        "training": {
            "output_dir": str(out),
            "max_steps": 4,
            "batch_size": 2,
            "gradient_accumulation": 1,
            "mixed_precision": "no",
            **training,
        },
        "optimizer": {"learning_rate": learning_rate},
        "checkpoints": {"every": 2},
        "logging": {"tensorboard": False},
    }
    return TrainConfig.model_validate(data)


def _trained_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    """The trained set as written: the U-Net's CSMs and MSFMs and the whole ControlNet."""
    weights = "diffusion_pytorch_model.safetensors"
    unet = load_file(model_dir / UNET_DIR / weights)
    controlnet = load_file(model_dir / CONTROLNET_DIR / weights)
    return {
        **{f"unet.{k}": v for k, v in unet.items() if is_adapter_key(k)},
        **{f"controlnet.{k}": v for k, v in controlnet.items()},
    }


def _everything(trainer: MegaSRTrainer) -> dict[str, torch.Tensor]:
    model = trainer.model
    state = {}
    for name, part in (
        ("denoiser", model.denoiser),
        ("vae", model.vae),
        ("text_encoder", model.text_encoder),
        ("extractors", model.extractors),
    ):
        state.update({f"{name}.{k}": v.detach().clone() for k, v in part.state_dict().items()})
    return state


def test_loss_falls_when_overfitting_a_fixed_batch(checkpoint, photos, tmp_path):
    # The tiny preset's ControlNet is 8 channels wide at full resolution (built to be quick,
    # docs/benchmarks.md): it halves the loss with a larger step (1e-2) and more of them (80).
    trainer = MegaSRTrainer(_config(checkpoint, photos, tmp_path / "run", learning_rate=1e-2))
    crops = trainer._training_crops()
    batch = {"hr": torch.stack([crops[0]["hr"], crops[1]["hr"]])}
    losses = []
    for _ in range(80):
        trainer.step = 0  # every draw is a function of the step: pinned, the batch is fixed
        losses.append(trainer.train_step([batch]))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses


def test_only_the_trainable_parameters_change(checkpoint, photos, tmp_path):
    trainer = MegaSRTrainer(_config(checkpoint, photos, tmp_path / "run"))
    before = _everything(trainer)
    crops = trainer._training_crops()
    for step in range(3):
        trainer.train_step(
            [{"hr": torch.stack([crops[2 * step]["hr"], crops[2 * step + 1]["hr"]])}]
        )
    after = _everything(trainer)
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    trainable = {f"denoiser.{key}" for key in trainer.trainable}
    assert changed <= trainable
    assert any(key.startswith("denoiser.controlnet.") for key in changed)
    assert any(".msfm." in key and key.startswith("denoiser.unet.") for key in changed)
    assert any(".lgwam." in key and key.startswith("denoiser.unet.") for key in changed)
    assert not any(key.startswith(("vae.", "text_encoder.", "extractors.")) for key in changed)


def test_a_resumed_run_continues_exactly_as_an_uninterrupted_one(checkpoint, photos, tmp_path):
    """With gradient accumulation and an EMA, whose states must come back too."""
    run = {"batch_size": 1, "gradient_accumulation": 2, "ema_decay": 0.9}
    straight = MegaSRTrainer(_config(checkpoint, photos, tmp_path / "straight", max_steps=4, **run))
    straight.run(quiet=True)
    first = MegaSRTrainer(_config(checkpoint, photos, tmp_path / "resumed", max_steps=2, **run))
    first.run(quiet=True)
    resumed = MegaSRTrainer(_config(checkpoint, photos, tmp_path / "resumed", max_steps=4, **run))
    summary = resumed.run(quiet=True)
    assert (summary.first_step, summary.last_step) == (2, 4)
    expected = _trained_weights(tmp_path / "straight" / "model")
    actual = _trained_weights(tmp_path / "resumed" / "model")
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[key], actual[key]) for key in expected)
    # ... and it really trained: step 4 differs from step 2 and from the start.
    at_two = load_file(tmp_path / "resumed" / "state" / "step-00000002" / "trainable.safetensors")
    at_four = load_file(tmp_path / "resumed" / "state" / "step-00000004" / "trainable.safetensors")
    assert any(not torch.equal(at_two[key], at_four[key]) for key in at_two)


def test_resuming_with_another_batch_size_is_refused(checkpoint, photos, tmp_path):
    MegaSRTrainer(_config(checkpoint, photos, tmp_path / "run", max_steps=2)).run(quiet=True)
    other = MegaSRTrainer(_config(checkpoint, photos, tmp_path / "run", max_steps=4, batch_size=1))
    with pytest.raises(Exception, match="needs the same seed, batch size"):
        other.run(quiet=True)


def test_cli_trains_a_checkpoint_that_model_info_and_the_engine_load(
    checkpoint, photos, tmp_path, capsys
):
    """TOML config, EMA, validation loss and samples in TensorBoard, then the checkpoint."""
    config = tmp_path / "train.toml"
    config.write_text(
        f"""
[model]
checkpoint = "{checkpoint}"
[data]
hr = ["{photos}"]
crop = {CROP}
workers = 0
[training]
output_dir = "{tmp_path / "run"}"
max_steps = 100
batch_size = 2
gradient_accumulation = 2
mixed_precision = "no"
ema_decay = 0.9
[logging]
every = 1
[validation]
hr = ["{photos}"]
images = 1
every = 1
sample_every = 2
sample_steps = 2
"""
    )
    assert main(["train", "megasr", "--config", str(config), "--max-steps", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "trained steps 0 to 2" in out
    model_dir = tmp_path / "run" / "model"
    info = checkpoint_info(model_dir)
    assert info.sources["trained_steps"] == "2" and info.trainable > 0
    Image.open(photos / "0.png").crop((0, 0, 16, 16)).save(tmp_path / "lr.png")
    upscale = ["upscale", str(tmp_path / "lr.png"), "-o", str(tmp_path / "sr"), "--engine",
               "megasr", "--model", str(model_dir), "--steps", "2", "--quiet"]  # fmt: skip
    assert main(upscale) == 0
    assert Image.open(tmp_path / "sr" / "lr.png").size == (64, 64)
    tags = _tensorboard_tags(tmp_path / "run" / "logs")
    assert {"train/loss", "train/lr", "validation/loss"} <= tags["scalars"]
    assert "samples/0" in tags["images"]


def _tensorboard_tags(directory: Path) -> dict[str, set[str]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(directory))
    events.Reload()
    found = events.Tags()
    return {"scalars": set(found["scalars"]), "images": set(found["images"])}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("batch_sise = 2", "training.batch_sise: unknown key"),
        ('mixed_precision = "fp8"', "training.mixed_precision: Input should be"),
    ],
)
def test_bad_configs_are_one_line_errors(tmp_path, capsys, change, message):
    config = tmp_path / "bad.toml"
    config.write_text(
        f'[model]\ncheckpoint = "x"\n[data]\nhr = ["y"]\n[training]\noutput_dir = "z"\n{change}\n'
    )
    assert main(["train", "megasr", "--config", str(config)]) == 1
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1


def test_missing_checkpoint_and_empty_data_are_one_line_errors(checkpoint, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    config = tmp_path / "train.toml"
    body = '[data]\nhr = ["{hr}"]\n[training]\noutput_dir = "{out}"\nmixed_precision = "no"\n'
    config.write_text(
        f'[model]\ncheckpoint = "{tmp_path / "nowhere"}"\n'
        + body.format(hr=empty, out=tmp_path / "o")
    )
    assert main(["train", "megasr", "--config", str(config)]) == 1
    assert "is not a MegaSR checkpoint" in capsys.readouterr().err
    config.write_text(
        f'[model]\ncheckpoint = "{checkpoint}"\n' + body.format(hr=empty, out=tmp_path / "o")
    )
    assert main(["train", "megasr", "--config", str(config)]) == 1
    error = capsys.readouterr().err.strip()
    assert "no image files in this folder" in error and len(error.splitlines()) == 1


def test_the_documented_sd2_config_is_seesrs_recipe(repo_root):
    config = read_train_config(repo_root / "configs" / "train-sd2-base.yaml")
    assert config.optimizer.learning_rate == 5e-5 and config.optimizer.weight_decay == 1e-2
    assert config.optimizer.grad_clip == 1.0 and config.optimizer.warmup_steps == 0
    training = config.training
    assert (training.batch_size, training.gradient_accumulation) == (16, 2)
    assert training.null_text_ratio == 0.5 and training.mixed_precision in ("fp16", "bf16")
    assert config.data.crop == 512 and config.checkpoints.every == 10_000
    assert config.degradation == TrainConfig.model_fields["degradation"].default_factory()


def test_yaml_and_toml_give_the_same_config(tmp_path):
    toml = tmp_path / "a.toml"
    toml.write_text('[model]\ncheckpoint = "c"\n[data]\nhr = ["h"]\n[training]\noutput_dir = "o"\n'
                    "[degradation.second]\nnoise_sigma = [1, 20]\n")  # fmt: skip
    yaml = tmp_path / "a.yaml"
    yaml.write_text("model: {checkpoint: c}\ndata: {hr: [h]}\ntraining: {output_dir: o}\n"
                    "degradation:\n  second: {noise_sigma: [1, 20]}\n")  # fmt: skip
    assert read_train_config(toml) == read_train_config(yaml)
    assert read_train_config(yaml).degradation.second.blur.probability == 0.8


def test_the_documented_tiny_config_runs_from_a_checkout(repo_root, tmp_path, monkeypatch, capsys):
    """docs/training.md's smoke run, in a copy of the paths it names (steps cut to 2)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "coffee.jpg").write_bytes(
        (repo_root / "samples/coffee.jpg").read_bytes()
    )
    assert main(["model", "init", "--preset", "tiny", "--out", "runs/tiny-checkpoint"]) == 0
    config = str(repo_root / "configs" / "train-tiny.toml")
    assert main(["train", "megasr", "--config", config, "--max-steps", "2", "--quiet"]) == 0
    assert "trained steps 0 to 2" in capsys.readouterr().out
    assert (
        checkpoint_info(tmp_path / "runs" / "tiny-training" / "model").sources["trained_steps"]
        == "2"
    )
