"""``MegaSRPipeline``: MegaSR as a diffusers pipeline, the one path every image takes.

A diffusers ``DiffusionPipeline`` with registered components (the MegaSR U-Net and
ControlNet, SD-2's VAE, text encoder, tokenizer and scheduler, and the frozen extractors),
saved and loaded with ``save_pretrained``/``from_pretrained`` and ``model_index.json``, which
also records the inference defaults (:class:`~megasr.model.megasr.config.InferenceConfig`),
the preset and where the base parts came from.

``pipe(image=..., prompt=..., num_inference_steps=..., generator=...)`` follows diffusers'
call conventions. The ``megasr`` engine and the worker use the same pipeline one level down:
:meth:`MegaSRPipeline.prepare` computes the conditions of whole images (all images of a call
through each extractor together) and :meth:`MegaSRPipeline.restore` samples them together,
tiled in latent space (:mod:`.sampling`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from transformers import CLIPTextModel, CLIPTokenizer

from megasr.errors import InvalidParameterError
from megasr.model.engines.base import Cancelled
from megasr.model.megasr.config import InferenceConfig, inference_config_from_dict
from megasr.model.megasr.denoiser import MegaSRDenoiser
from megasr.model.megasr.extractor_component import MegaSRExtractors
from megasr.model.megasr.networks import MegaSRControlNetModel, MegaSRUNet2DConditionModel
from megasr.model.megasr.prompts import PromptEncoder, compose_prompt
from megasr.model.megasr.sampling import ImageRequest, TiledSampler

SCALE = 4
"""What ``__call__`` upscales by when no output size is given."""

PipelineImageInput = PIL.Image.Image | np.ndarray | torch.Tensor | Sequence[Any]


@dataclass
class MegaSRPipelineOutput(BaseOutput):
    """``images``: PIL images, a NumPy array (B, H, W, 3) or a tensor (B, 3, H, W) in [0, 1]
    (a list of arrays or tensors when the images differ in size)."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor | list[Any]


@dataclass(frozen=True)
class RestoreInput:
    """One image as a caller asks for it.

    ``lr`` (3, h, w) in [0, 1]; ``size`` the output (height, width); the user's prompt and
    negative prompt (None: the checkpoint's) and seed (None: the checkpoint's); ``options``
    this image's sampling settings (None: the pipeline's defaults, the checkpoint's);
    ``generator`` replaces the seed's generator.
    """

    lr: torch.Tensor
    size: tuple[int, int]
    prompt: str = ""
    negative_prompt: str | None = None
    seed: int | None = None
    options: InferenceConfig | None = None
    generator: torch.Generator | None = None


class MegaSRPipeline(DiffusionPipeline):
    """Real-world super-resolution with MegaSR (see the module docstring)."""

    model_cpu_offload_seq = "text_encoder->controlnet->unet->vae"

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: MegaSRUNet2DConditionModel,
        controlnet: MegaSRControlNetModel,
        scheduler: SchedulerMixin,
        extractors: MegaSRExtractors,
        inference: dict[str, Any] | None = None,
        preset: str = "sd2-base",
        sources: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            controlnet=controlnet,
            scheduler=scheduler,
            extractors=extractors,
        )
        defaults = inference_config_from_dict(dict(inference or {}))
        self.register_to_config(inference=asdict(defaults), preset=preset, sources=sources or {})
        self.denoiser = MegaSRDenoiser(unet, controlnet)
        self.sampler = TiledSampler(self.denoiser, vae, dict(scheduler.config), defaults)
        self.image_processor = VaeImageProcessor(do_resize=False, do_normalize=False)

    @property
    def inference(self) -> InferenceConfig:
        """The checkpoint's inference defaults (``model_index.json``)."""
        return inference_config_from_dict(dict(self.config.inference))

    @property
    def scheduler_config(self) -> dict[str, Any]:
        return dict(self.scheduler.config)

    def freeze(self) -> MegaSRPipeline:
        """Inference mode: every component in eval and without gradients."""
        for module in self.components.values():
            if isinstance(module, torch.nn.Module):
                module.eval().requires_grad_(False)
        return self

    # -- the diffusers call ---------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        image: PipelineImageInput,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        height: int | None = None,
        width: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> MegaSRPipelineOutput | tuple:
        """Restore ``image`` (one or a list: PIL, NumPy HWC or tensors CHW/BCHW in [0, 1]).

        The output is ``height`` x ``width`` (default: 4x the input). ``prompt`` and
        ``negative_prompt`` (one, or one per image) add to the checkpoint's prompts;
        ``num_inference_steps`` and ``guidance_scale`` replace its defaults; ``generator``
        (one, or one per image) draws the noise (default: the checkpoint's seed, so a call is
        reproducible). ``output_type``: ``"pil"``, ``"np"`` or ``"pt"``.
        """
        images = self._images(image)
        count = len(images)
        prompts = _per_image(prompt, count, "prompt", "")
        negatives = _per_image(negative_prompt, count, "negative_prompt", None)
        generators = _per_image(generator, count, "generator", None)
        changes = {"steps": num_inference_steps, "guidance_scale": guidance_scale}
        options = replace(
            self.sampler.options, **{k: v for k, v in changes.items() if v is not None}
        )
        inputs = [
            RestoreInput(
                lr=lr,
                size=(height or SCALE * lr.shape[-2], width or SCALE * lr.shape[-1]),
                prompt=prompts[i],
                negative_prompt=negatives[i],
                options=options,
                generator=generators[i],
            )
            for i, lr in enumerate(images)
        ]
        restored = self.restore(self.prepare(inputs))
        out = self._postprocess([r for r in restored if not isinstance(r, Cancelled)], output_type)
        self.maybe_free_model_hooks()
        return MegaSRPipelineOutput(images=out) if return_dict else (out,)

    def _images(self, image: PipelineImageInput) -> list[torch.Tensor]:
        """Each input image as a (3, h, w) float tensor in [0, 1]."""
        many = isinstance(image, list | tuple) or (
            isinstance(image, torch.Tensor) and image.ndim == 4
        )
        items = list(image) if many else [image]
        if not items:
            raise InvalidParameterError("MegaSRPipeline needs at least one image")
        return [self.image_processor.preprocess(item)[0].float().clamp(0, 1) for item in items]

    def _postprocess(self, images: list[torch.Tensor], output_type: str) -> Any:
        if output_type not in ("pil", "np", "pt"):
            raise InvalidParameterError(f"output_type must be pil, np or pt, not {output_type!r}")
        each = [self.image_processor.postprocess(i[None], output_type=output_type) for i in images]
        if output_type == "pil":
            return [pil for one in each for pil in one]
        same = len({tuple(i.shape) for i in images}) == 1
        if output_type == "np":
            return np.concatenate(each) if same else [one[0] for one in each]
        return torch.cat(each) if same else [one[0] for one in each]

    # -- what the engine calls ------------------------------------------------------------------

    @torch.no_grad()
    def prepare(self, inputs: Sequence[RestoreInput]) -> list[ImageRequest]:
        """The requests that restore ``inputs``, with every condition of each whole image.

        Each LR image is upscaled bicubically to its output size; the guidance maps come from
        the upscaled image, the CLIP tokens and tags from the LR image, all images of the call
        through each extractor together (one CLIP pass gives both tokens and tags); every
        prompt and negative prompt goes through the text encoder in one batch. The results
        stay on the pipeline's device.
        """
        device = self.text_encoder.device
        defaults = self.sampler.options
        options = [given.options or defaults for given in inputs]
        lrs = [given.lr.float().clamp(0.0, 1.0).to(device) for given in inputs]
        lr_ups = [_bicubic(lr, given.size) for lr, given in zip(lrs, inputs, strict=True)]
        maps = self.extractors.guidance_each(lr_ups)
        tokens, tags = self.extractors.semantics(lrs)
        prompts = [
            compose_prompt(tag, given.prompt, option.added_prompt)
            for tag, given, option in zip(tags, inputs, options, strict=True)
        ]
        negatives = [
            option.negative_prompt if given.negative_prompt is None else given.negative_prompt
            for given, option in zip(inputs, options, strict=True)
        ]
        text = PromptEncoder(self.tokenizer, self.text_encoder)([*prompts, *negatives])
        count = len(inputs)
        return [
            ImageRequest(
                lr_up=lr_ups[i],
                text=text[i],
                negative_text=text[count + i],
                seed=defaults.seed if given.seed is None else given.seed,
                image_tokens=tokens[i],
                hed=maps[i].hed,
                depth=maps[i].depth,
                seg=maps[i].seg,
                options=given.options,
                generator=given.generator,
            )
            for i, given in enumerate(inputs)
        ]

    def restore(
        self,
        requests: list[ImageRequest],
        batch_size: int = 4,
        on_batch: Callable[[int], None] | None = None,
    ) -> list[torch.Tensor | Cancelled]:
        """Sample every request together (:meth:`.sampling.TiledSampler.restore`)."""
        return self.sampler.restore(requests, batch_size, on_batch)

    def restore_one(self, request: ImageRequest, batch_size: int = 4) -> torch.Tensor:
        return self.sampler.restore_one(request, batch_size)


def _bicubic(lr: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``x_lr_up``: the LR image (3, h, w) upscaled bicubically to ``size``, in [0, 1]."""
    up = F.interpolate(lr[None], size=size, mode="bicubic", align_corners=False)
    return up[0].clamp(0.0, 1.0)


def _per_image(value: Any, count: int, name: str, default: Any) -> list[Any]:
    """One value per image: a list as given (its length checked), else ``value`` for all."""
    if isinstance(value, list):
        if len(value) != count:
            raise InvalidParameterError(f"{len(value)} {name}s for {count} image(s)")
        return value
    return [default if value is None else value] * count
