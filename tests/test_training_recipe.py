"""A recipe that means one thing: the global batch and its split, the named base models."""

from __future__ import annotations

from itertools import islice

import huggingface_hub.constants
import pytest

from megasr.cli.main import main
from megasr.errors import InvalidParameterError
from megasr.model.training.base_models import ROLES
from megasr.model.training.batch_split import split_batch
from megasr.model.training.data import SampleNumbers
from megasr.model.training.megasr_config import read_train_config


@pytest.mark.parametrize(
    ("processes", "micro", "accumulation"),
    [(1, 16, 2), (2, 16, 1), (8, 4, 1)],
)
def test_seesrs_batch_of_32_splits_over_1_2_and_8_processes(processes, micro, accumulation):
    split = split_batch(32, processes, micro_batch_size=16)
    assert (split.micro_batch, split.accumulation) == (micro, accumulation)
    assert split.processes * split.micro_batch * split.accumulation == 32


@pytest.mark.parametrize("processes", [1, 2, 8])
def test_every_step_reads_the_same_global_samples_however_it_is_split(processes):
    """Step s reads global samples 32s .. 32s + 31, each once, over all simulated processes
    and accumulation steps; a resumed run starts at the same place."""
    split = split_batch(32, processes, micro_batch_size=4)
    for step in (0, 3):
        read = []
        for rank in range(processes):
            numbers = SampleNumbers(step * split.accumulation, split.micro_batch, processes, rank)
            read += list(islice(iter(numbers), split.per_process))
        assert sorted(read) == list(range(32 * step, 32 * (step + 1)))


def test_a_batch_that_does_not_divide_is_refused_with_the_fix():
    with pytest.raises(InvalidParameterError, match="does not divide over 8 processes"):
        split_batch(36, 8, 4)
    with pytest.raises(InvalidParameterError, match="choose a micro-batch size that divides 12"):
        split_batch(24, 2, 5)


def test_the_trainer_refuses_an_undividable_batch_before_any_work(tmp_path, capsys):
    config = tmp_path / "train.toml"
    config.write_text(
        '[model]\ncheckpoint = "nowhere"\n[data]\nhr = ["nowhere"]\n'
        f'[training]\noutput_dir = "{tmp_path / "run"}"\nbatch_size = 6\nmicro_batch_size = 4\n'
    )
    assert main(["train", "megasr", "--config", str(config)]) == 1
    error = capsys.readouterr().err.strip()
    assert "6 samples each, which micro-batches of 4" in error and len(error.splitlines()) == 1
    config.write_text(config.read_text().replace("batch_size = 6", "gradient_accumulation = 2"))
    assert main(["train", "megasr", "--config", str(config)]) == 1
    assert "gradient_accumulation is derived, not set" in capsys.readouterr().err


def test_the_sd2_recipe_names_its_base_models_by_hub_id_and_revision(repo_root):
    base = read_train_config(repo_root / "configs" / "train-sd2-base.yaml").base_models
    assert base is not None
    assert base.sd.id == "stabilityai/stable-diffusion-2-base"
    for role in ROLES:
        model = getattr(base, role)
        assert "/" in model.id and model.revision


def test_fetch_base_fails_in_one_line_naming_the_model_when_the_hub_is_out_of_reach(
    repo_root, tmp_path, monkeypatch, capsys
):
    """No hub here: offline mode makes the failure immediate (a network error reads the
    same after the client's retries)."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    config = str(repo_root / "configs" / "train-sd2-base.yaml")
    argv = ["train", "fetch-base", "--config", config, "--out", str(tmp_path / "base")]
    assert main(argv) == 1
    error = capsys.readouterr().err.strip()
    assert "cannot fetch base_models.sd (stabilityai/stable-diffusion-2-base@" in error
    assert len(error.splitlines()) == 1
