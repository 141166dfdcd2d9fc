"""The configuration of ``megasr train megasr``: one TOML or YAML file, every knob typed.

Defaults are SeeSR's published recipe for SD-2-base (the design's training section): 512 px
HR crops degraded on the fly by SeeSR's Real-ESRGAN parameters, AdamW at 5e-5 constant with
weight decay 1e-2 and gradient clipping at 1.0, a global batch of 32 per optimizer step
(split over the processes and gradient accumulation by the trainer), 150k steps, mixed
precision, 50 % of prompts replaced by the empty prompt, a checkpoint every 10k steps and
resuming from the latest. Only the starting checkpoint, the HR folders and the
output folder have no default. Relative paths are taken from the working directory.
``configs/train-sd2-base.yaml`` spells the whole recipe out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from megasr.model.config_files import ConfigRecord, read_config_file
from megasr.model.degradation import DegradationConfig
from megasr.model.training.base_models import BaseModelsSection


class ModelSection(ConfigRecord):
    checkpoint: Path
    """The MegaSR checkpoint to start from (``megasr model init`` builds one)."""


class DataSection(ConfigRecord):
    hr: list[Path] = Field(min_length=1)
    """Folders of HR photographs, searched recursively."""
    lr: list[Path] = Field(default_factory=list)
    """Pre-made LR folders, one per HR folder (same relative names); none: degrade on the fly."""
    crop: int = Field(512, ge=8)
    hflip: bool = True
    vflip: bool = False
    workers: int = Field(4, ge=0)

    @model_validator(mode="after")
    def _check(self) -> DataSection:
        if self.lr and len(self.lr) != len(self.hr):
            raise ValueError("give one LR folder for each HR folder, or none")
        return self


class OptimizerSection(ConfigRecord):
    learning_rate: float = Field(5e-5, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    grad_clip: float = Field(1.0, gt=0)
    warmup_steps: int = Field(0, ge=0)
    """Linear warm-up to ``learning_rate``, then constant (SeeSR: none)."""


class TrainingSection(ConfigRecord):
    output_dir: Path
    """Receives ``model/`` (a MegaSR checkpoint), ``state/`` (resume points) and ``logs/``."""
    max_steps: int = Field(150_000, ge=1)
    """Optimizer steps, each of ``batch_size`` samples (SeeSR: about 150k)."""
    batch_size: int = Field(32, ge=1)
    """Samples per optimizer step over all processes together (the global batch)."""
    micro_batch_size: int = Field(16, ge=1)
    """The most samples one process runs through the model at once (the memory knob); the
    trainer accumulates gradients over ``batch_size / (processes * micro-batch)`` of them."""
    mixed_precision: Literal["no", "fp16", "bf16"] = "bf16"
    gradient_checkpointing: bool = True
    seed: int = 0
    null_text_ratio: float = Field(0.5, ge=0.0, le=1.0)
    """Share of samples trained with the empty prompt (what classifier-free guidance needs)."""
    tags: Literal["lr", "hr", "none"] = "lr"
    """Which image the tagger reads for the prompt (``lr``: as at sampling time)."""
    ema_decay: float | None = Field(None, gt=0.0, lt=1.0)
    """Keep an exponential moving average of the trainable weights and export it."""

    @model_validator(mode="before")
    @classmethod
    def _no_accumulation(cls, data: object) -> object:
        if isinstance(data, dict) and "gradient_accumulation" in data:
            raise ValueError(
                "gradient_accumulation is derived, not set: give the global batch_size (and "
                "micro_batch_size); the trainer splits it over processes and accumulation"
            )
        return data


class CheckpointSection(ConfigRecord):
    every: int = Field(10_000, ge=1)
    """Write a resume point and refresh ``model/`` every this many steps (and at the end)."""
    keep: int = Field(2, ge=1)
    """Resume points kept; older ones are deleted."""
    resume: str = "latest"
    """``latest`` (the newest resume point in ``output_dir``, if any), ``none``, or a folder."""


class LoggingSection(ConfigRecord):
    every: int = Field(10, ge=1)
    tensorboard: bool = True


class ValidationSection(ConfigRecord):
    hr: list[Path] = Field(default_factory=list)
    """Held-out HR folders; none: no validation."""
    images: int = Field(4, ge=1)
    every: int = Field(1000, ge=1)
    """Validation loss (fixed images, degradations, noise and timesteps) every this many steps."""
    sample_every: int = Field(5000, ge=0)
    """Restored validation images to TensorBoard every this many steps; 0: never."""
    sample_steps: int = Field(20, ge=1)


class TrainConfig(ConfigRecord):
    base_models: BaseModelsSection | None = None
    """The hub models ``model.checkpoint`` is built from (``megasr train fetch-base``)."""
    model: ModelSection
    data: DataSection
    training: TrainingSection
    degradation: DegradationConfig = Field(default_factory=DegradationConfig)
    optimizer: OptimizerSection = Field(default_factory=OptimizerSection)
    checkpoints: CheckpointSection = Field(default_factory=CheckpointSection)
    logging: LoggingSection = Field(default_factory=LoggingSection)
    validation: ValidationSection = Field(default_factory=ValidationSection)

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.data.crop % self.degradation.scale:
            raise ValueError(
                f"data.crop ({self.data.crop}) must be a multiple of the scale "
                f"({self.degradation.scale})"
            )
        return self


def read_train_config(path: Path) -> TrainConfig:
    return read_config_file(path, TrainConfig)
