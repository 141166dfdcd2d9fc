"""MegaSR training: the noise-prediction objective of latent diffusion, conditioned as at
sampling time, on the trainable part of the model only.

For each HR crop the trainer makes the LR image (Real-ESRGAN degradation on the device, or
a pre-made pair), upscales it bicubically (the ControlNet's input and the extractors'), runs
the frozen extractors (HED, depth, segmentation maps; CLIP image tokens; tags for the
prompt), drops the prompt to "" with the null-text ratio, encodes the prompt with SD's
frozen text encoder and the HR crop with the frozen VAE, noises the latents at a uniform
timestep and regresses the model's prediction onto the noise (or onto ``v`` for a
v-prediction base) with an MSE. Trainable is exactly ``MegaSRDenoiser.trainable_parameters``
(model.md's split: the whole ControlNet, every CSM and MSFM); everything else is frozen.

Optimisation is AdamW with gradient clipping, mixed precision, gradient accumulation and
multi-GPU data parallelism through ``accelerate``. Every random draw of a step (crops,
degradations, prompt dropout, noise, timesteps) is a function of the seed, the step, the
micro-batch and the process, so a run resumed from a resume point continues exactly as an
uninterrupted one would have.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator, PartialState
from diffusers import DDPMScheduler
from diffusers.training_utils import EMAModel
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm import tqdm

from megasr.errors import InvalidParameterError
from megasr.model.degradation import RealESRGANDegradation
from megasr.model.degradation.draws import chance, derived_generator
from megasr.model.evaluation.degradations import image_generator
from megasr.model.megasr.checkpoint import load_checkpoint
from megasr.model.megasr.conditions import MegaSRConditions
from megasr.model.megasr.prompts import PromptEncoder
from megasr.model.training.batch_split import split_batch
from megasr.model.training.data import (
    CropOptions,
    SampleNumbers,
    TrainingCrops,
    center_crop,
    collate,
    find_images,
    load_held_out,
    pair_images,
)
from megasr.model.training.export import export_model
from megasr.model.training.inputs import upscale_to
from megasr.model.training.megasr_config import TrainConfig
from megasr.model.training.samples import restore_samples
from megasr.model.training.tensorboard_log import TrainingLog
from megasr.model.training.train_state import (
    ResumeKey,
    load_state,
    prune_states,
    resume_point,
    save_state,
    state_dir,
)

MODEL_DIR = "model"
STATES_DIR = "state"
LOGS_DIR = "logs"
VALIDATION_STREAM = 2**31 - 1  # a step number no run reaches: validation's own draws
PRECISION_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class TrainingSummary:
    first_step: int
    last_step: int
    last_loss: float | None
    seconds: float
    model_dir: Path
    skipped: int


class MegaSRTrainer:
    """One training run of ``config``; :meth:`run` trains, :meth:`train_step` is one step."""

    def __init__(self, config: TrainConfig, accelerator: Accelerator | None = None) -> None:
        training = config.training
        self.config = config
        processes = (accelerator or PartialState()).num_processes
        self.split = split_batch(training.batch_size, processes, training.micro_batch_size)
        self.accelerator = accelerator or Accelerator(
            mixed_precision=training.mixed_precision,
            gradient_accumulation_steps=self.split.accumulation,
        )
        self.accelerator.gradient_accumulation_steps = self.split.accumulation
        device = self.accelerator.device
        self.model = load_checkpoint(config.model.checkpoint, device, torch.float32)
        frozen_dtype = PRECISION_DTYPES[training.mixed_precision]
        if frozen_dtype != torch.float32:  # the frozen parts only run forward: half is enough
            for part in (self.model.vae, self.model.text_encoder, self.model.extractors):
                part.to(dtype=frozen_dtype)
        denoiser = self.model.denoiser
        denoiser.set_trainable()
        denoiser.train()
        if training.gradient_checkpointing:
            denoiser.unet.enable_gradient_checkpointing()
            denoiser.controlnet.enable_gradient_checkpointing()
        self.trainable = denoiser.trainable_parameters()
        params = list(self.trainable.values())
        options = config.optimizer
        optimizer = torch.optim.AdamW(
            params,
            lr=options.learning_rate,
            betas=options.betas,
            eps=options.eps,
            weight_decay=options.weight_decay,
        )
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / (options.warmup_steps + 1))
        )
        self.denoiser, self.optimizer = self.accelerator.prepare(denoiser, optimizer)
        self.ema = EMAModel(params, decay=training.ema_decay) if training.ema_decay else None
        self.noise_scheduler = DDPMScheduler.from_config(self.model.scheduler_config)
        self.prompts = PromptEncoder(self.model.tokenizer, self.model.text_encoder)
        self.degradation = RealESRGANDegradation(config.degradation)
        self.step = 0

    @property
    def out_dir(self) -> Path:
        return self.config.training.output_dir

    # -- one step ---------------------------------------------------------------------------

    def loss(self, batch: dict, generator: torch.Generator) -> Tensor:
        """The noise-prediction MSE of one micro-batch ``{"hr", optional "lr"}``."""
        inputs = self._inputs(batch, generator)
        prediction = self.denoiser(*inputs[:-1])
        return F.mse_loss(prediction.float(), inputs[-1].float())

    def train_step(self, micro_batches: list[dict]) -> float:
        """One optimizer step over ``split.accumulation`` micro-batches; the mean loss."""
        accelerator, training = self.accelerator, self.config.training
        losses = []
        for micro, batch in enumerate(micro_batches):
            generator = derived_generator(
                training.seed, self.step, micro, accelerator.process_index
            )
            with accelerator.accumulate(self.denoiser):
                loss = self.loss(batch, generator)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(
                        self.trainable.values(), self.config.optimizer.grad_clip
                    )
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
        self.schedule.step()
        if self.ema is not None:
            self.ema.step(self.trainable.values())
        self.step += 1
        return sum(losses) / len(losses)

    @torch.no_grad()
    def _inputs(self, batch: dict, generator: torch.Generator) -> tuple:
        """(noisy latents, timesteps, text, control, conditions, target) of a micro-batch."""
        model, training = self.model, self.config.training
        device = self.accelerator.device
        hr = batch["hr"].to(device)
        lr = batch["lr"].to(device) if "lr" in batch else self.degradation(hr, generator)
        lr_up = upscale_to(lr, hr)
        maps = model.extractors.guidance(lr_up)
        tokens = model.extractors.image_tokens(lr).float()
        count = hr.shape[0]
        tags = [""] * count
        if training.tags != "none":
            tags = model.extractors.tags(lr if training.tags == "lr" else hr)
        dropped = chance(training.null_text_ratio, count, generator).tolist()
        text = self.prompts(["" if drop else tag for tag, drop in zip(tags, dropped, strict=True)])
        pixels = (hr * 2.0 - 1.0).to(model.vae.dtype)
        posterior = model.vae.encode(pixels).latent_dist
        latents = posterior.sample(generator=generator).float() * model.vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=generator).to(device)
        steps = self.noise_scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (count,), generator=generator).to(device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        conditions = MegaSRConditions(
            image_tokens=tokens,
            hed=maps.hed.float(),
            depth=maps.depth.float(),
            seg=maps.seg.float(),
        )
        return noisy, timesteps, text.float(), lr_up.float(), conditions, target

    # -- the run ----------------------------------------------------------------------------

    def run(self, quiet: bool = False) -> TrainingSummary:
        """Train from the resume point (or the start) to ``max_steps``."""
        config = self.config
        crops = self._training_crops()
        first = self._resume()
        validation = self._validation_pairs()
        log = TrainingLog(self.out_dir / LOGS_DIR, config.logging.tensorboard and self._main)
        batches = self._micro_batches(crops, first)
        bar = tqdm(total=config.training.max_steps, initial=first, desc="training",
                   unit="step", disable=quiet or not self._main, file=sys.stderr)  # fmt: skip
        skipped: set[str] = set()
        loss = None
        start = time.perf_counter()
        try:
            while self.step < config.training.max_steps:
                micro = [next(batches) for _ in range(self.split.accumulation)]
                for batch in micro:
                    for path in set(batch["skipped"]) - skipped:
                        skipped.add(path)
                        bar.write(f"megasr train: skipped {path}", file=sys.stderr)
                loss = self.train_step(micro)
                bar.update()
                bar.set_postfix(loss=f"{loss:.4f}")
                self._after_step(loss, log, validation)
        finally:
            bar.close()
            log.close()
        if self.step > first or not (self.out_dir / MODEL_DIR).exists():
            self._checkpoint()
        return TrainingSummary(
            first_step=first,
            last_step=self.step,
            last_loss=loss,
            seconds=time.perf_counter() - start,
            model_dir=self.out_dir / MODEL_DIR,
            skipped=len(skipped),
        )

    def _after_step(self, loss: float, log: TrainingLog, validation: list) -> None:
        config, step = self.config, self.step
        if step % config.logging.every == 0:
            log.scalars({"train/loss": loss, "train/lr": self.schedule.get_last_lr()[0]}, step)
        if validation and step % config.validation.every == 0:
            log.scalars({"validation/loss": self.validation_loss(validation)}, step)
        sample_every = config.validation.sample_every
        if validation and sample_every and step % sample_every == 0 and self._main:
            self._log_samples(log, validation)
        if step % config.checkpoints.every == 0 and step < config.training.max_steps:
            self._checkpoint()

    @torch.no_grad()
    def validation_loss(self, pairs: list[tuple[Tensor, Tensor]]) -> float:
        """Mean loss over the validation images with draws fixed for the whole run."""
        losses = []
        for index, (hr, lr) in enumerate(pairs):
            generator = derived_generator(self.config.training.seed, VALIDATION_STREAM, index)
            losses.append(float(self.loss({"hr": hr[None], "lr": lr[None]}, generator)))
        return sum(losses) / len(losses)

    def _log_samples(self, log: TrainingLog, pairs: list[tuple[Tensor, Tensor]]) -> None:
        with self._ema_weights():
            self.model.denoiser.eval()
            strips = restore_samples(
                self.model, pairs, self.config.validation.sample_steps, self.config.training.seed
            )
            self.model.denoiser.train()
        for index, strip in enumerate(strips):
            log.image(f"samples/{index}", strip, self.step)

    def _checkpoint(self) -> None:
        """A resume point and a refreshed ``model/``, written by the main process."""
        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        if self._main:
            states = self.out_dir / STATES_DIR
            save_state(state_dir(states, self.step), self.step, self._key, self.trainable,
                       self._parts)  # fmt: skip
            prune_states(states, self.config.checkpoints.keep)
            with self._ema_weights():
                export_model(
                    accelerator.unwrap_model(self.denoiser),
                    self.config.model.checkpoint,
                    self.out_dir / MODEL_DIR,
                    self.step,
                )
        accelerator.wait_for_everyone()

    def _resume(self) -> int:
        source = resume_point(
            self.out_dir / STATES_DIR,
            self.config.checkpoints.resume,
            "(checkpoints.resume = latest) or choose another training.output_dir",
        )
        if source is not None:
            self.step = load_state(source, self._key, self.trainable, self._parts)
        return self.step

    @property
    def _parts(self) -> dict:
        parts = {"optimizer": self.optimizer, "schedule": self.schedule}
        if self.ema is not None:
            parts["ema"] = self.ema
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None:
            parts["scaler"] = scaler
        return parts

    @property
    def _key(self) -> ResumeKey:
        training = self.config.training
        return ResumeKey(
            seed=training.seed,
            batch_size=training.batch_size,
            micro_batch_size=self.split.micro_batch,
            world_size=self.split.processes,
        )

    @property
    def _main(self) -> bool:
        return self.accelerator.is_main_process

    def _ema_weights(self) -> _EMAWeights:
        return _EMAWeights(self.ema, list(self.trainable.values()))

    def _training_crops(self) -> TrainingCrops:
        data = self.config.data
        sources = pair_images(data.hr, data.lr) if data.lr else find_images(data.hr)
        options = CropOptions(
            crop=data.crop,
            scale=self.config.degradation.scale,
            hflip=data.hflip,
            vflip=data.vflip,
            seed=self.config.training.seed,
        )
        crops = TrainingCrops(sources, options)
        crops.first_readable()
        return crops

    def _micro_batches(self, crops: TrainingCrops, first_step: int) -> Iterator[dict]:
        accelerator, split = self.accelerator, self.split
        sampler = SampleNumbers(
            first=first_step * split.accumulation,
            batch_size=split.micro_batch,
            world=split.processes,
            rank=accelerator.process_index,
        )
        loader = DataLoader(
            crops,
            batch_size=split.micro_batch,
            sampler=sampler,
            num_workers=self.config.data.workers,
            collate_fn=collate,
            pin_memory=accelerator.device.type == "cuda",
        )
        return iter(loader)

    def _validation_pairs(self) -> list[tuple[Tensor, Tensor]]:
        """(HR, LR) of the first validation images, centre crops degraded once, on the CPU."""
        validation = self.config.validation
        if not validation.hr:
            return []
        images, _ = load_held_out(validation.hr)
        if not images:
            raise InvalidParameterError("validation.hr holds no readable images")
        scale = self.config.degradation.scale
        pairs = []
        for name, image in images[: validation.images]:
            hr = center_crop(image, self.config.data.crop, 8 * scale)
            generator = image_generator(self.config.training.seed, name)
            pairs.append((hr, self.degradation(hr[None], generator)[0]))
        return pairs


class _EMAWeights:
    """Within the block the trainable weights are the EMA's (no EMA: unchanged)."""

    def __init__(self, ema: EMAModel | None, params: list) -> None:
        self.ema, self.params = ema, params

    def __enter__(self) -> None:
        if self.ema is not None:
            self.ema.store(self.params)
            self.ema.copy_to(self.params)

    def __exit__(self, *exc: object) -> None:
        if self.ema is not None:
            self.ema.restore(self.params)
