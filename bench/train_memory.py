"""Memory of one MegaSR training step on the SD-2-base recipe, measured on the CPU.

No GPU and no weights are needed: every network is built from its configuration with random
weights (nothing is downloaded), which costs the same memory as trained weights.

- Parameters: counted exactly, each network built on PyTorch's ``meta`` device (shapes, no
  memory): the MegaSR denoiser (SD-2-base U-Net with its CSMs and MSFMs, the ControlNet),
  and the frozen parts the trainer runs (SD-2's VAE and OpenCLIP ViT-H text encoder, CLIP
  ViT-L/14, DPT-Hybrid, UperNet-ConvNeXt-small, HED), with the architectures of the hub
  models ``configs/train-sd2-base.yaml`` names.
- Activations: one forward and backward pass of the full-size denoiser at batch 1 under
  bfloat16 autocast, as the trainer runs it, in a fresh process per setting, with and without
  gradient checkpointing, at two crop sizes (to check how they scale). Two figures: the
  bytes autograd holds for the backward pass (every tensor saved for backward, counted once
  per storage, the weights themselves left out, through
  ``torch.autograd.graph.saved_tensors_hooks``; autocast's bfloat16 copies of the trainable
  weights are among them), and the peak resident memory during the step above the resident
  memory before it (sampled every 2 ms from ``/proc/self/statm``, with glibc's mmap
  threshold fixed so that freed tensors leave the resident set; it includes the gradients
  and the backward pass's transients). To stay within a shared machine's
  memory the frozen U-Net backbone's convolution and linear weights are held in bfloat16
  here (its norms stay float32, as CPU autocast needs); under autocast that does not change
  what the step computes or keeps.

    .venv/bin/python bench/train_memory.py [--sides 256 384] [--json FILE]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F

GIB = 1024**3
PAGE = os.sysconf("SC_PAGE_SIZE")
# A fixed mmap threshold (glibc otherwise raises it as large blocks are freed) makes every
# tensor of 128 KiB or more its own mapping, returned on free: the resident set size then
# follows the live tensors, so its peak is the step's peak.
ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def parameter_counts() -> dict[str, int]:
    """Exact parameter counts of every network of the recipe, built on the meta device."""
    from diffusers import AutoencoderKL
    from transformers import (
        CLIPConfig,
        CLIPModel,
        CLIPTextConfig,
        CLIPTextModel,
        ConvNextConfig,
        DPTConfig,
        DPTForDepthEstimation,
        UperNetConfig,
        UperNetForSemanticSegmentation,
    )

    from megasr.model.extractors.hed import HEDNet
    from megasr.model.megasr.presets import sd2_base_denoiser

    with torch.device("meta"):
        denoiser = sd2_base_denoiser()
        trainable = sum(p.numel() for p in denoiser.trainable_parameters().values())
        networks = {
            "denoiser (U-Net + ControlNet + new modules)": denoiser,
            "VAE (SD-2)": AutoencoderKL(**SD2_VAE),
            "text encoder (OpenCLIP ViT-H/14 text)": CLIPTextModel(CLIPTextConfig(**SD2_TEXT)),
            "CLIP ViT-L/14 (vision and text)": CLIPModel(CLIPConfig(**CLIP_L14)),
            "depth: DPT-Hybrid": DPTForDepthEstimation(DPTConfig(**DPT_HYBRID)),
            "segmentation: UperNet-ConvNeXt-small": UperNetForSemanticSegmentation(
                UperNetConfig(backbone_config=ConvNextConfig(**CONVNEXT_SMALL), num_labels=150)
            ),
            "HED (VGG16)": HEDNet(),
        }
        counts = {name: sum(p.numel() for p in net.parameters()) for name, net in networks.items()}
    counts["trainable (ControlNet + CSM + MSFM)"] = trainable
    return counts


# The architectures of the models configs/train-sd2-base.yaml names (their config.json).
SD2_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512], "norm_num_groups": 32, "sample_size": 512,
}  # fmt: skip
SD2_TEXT = {
    "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23,
    "num_attention_heads": 16, "max_position_embeddings": 77, "hidden_act": "gelu",
    "projection_dim": 512, "vocab_size": 49408,
}  # fmt: skip
CLIP_L14 = {
    "text_config": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                    "num_attention_heads": 12, "projection_dim": 768},
    "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                      "num_attention_heads": 16, "patch_size": 14, "image_size": 224,
                      "projection_dim": 768},
    "projection_dim": 768,
}  # fmt: skip
DPT_HYBRID = {
    "is_hybrid": True, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
    "backbone_out_indices": [2, 5, 8, 11], "neck_hidden_sizes": [256, 512, 768, 768],
    "embedding_type": "vit_hybrid", "readout_type": "project",
}  # fmt: skip
CONVNEXT_SMALL = {
    "depths": [3, 3, 27, 3], "hidden_sizes": [96, 192, 384, 768],
    "out_features": ["stage1", "stage2", "stage3", "stage4"],
}  # fmt: skip


def step_memory(side: int, checkpointing: bool) -> dict[str, float]:
    """One training step of the full-size denoiser at batch 1 and ``side`` pixels."""
    from megasr.model.megasr.conditions import MegaSRConditions
    from megasr.model.megasr.presets import sd2_base_denoiser

    torch.manual_seed(0)
    denoiser = sd2_base_denoiser()
    denoiser.set_trainable()
    for param in denoiser.parameters():
        if not param.requires_grad and param.ndim >= 2:  # frozen convolution/linear weights
            param.data = param.data.to(torch.bfloat16)
    denoiser.train()
    if checkpointing:
        denoiser.unet.enable_gradient_checkpointing()
        denoiser.controlnet.enable_gradient_checkpointing()
    latent = side // 8
    inputs = (
        torch.randn(1, 4, latent, latent),
        torch.tensor([500]),
        torch.randn(1, 77, 1024),
        torch.rand(1, 3, side, side),
        MegaSRConditions(
            image_tokens=torch.randn(1, 257, 1024),
            hed=torch.rand(1, 1, side, side),
            depth=torch.rand(1, 1, side, side),
            seg=torch.rand(1, 3, side, side),
        ),
    )
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    before = _rss()
    weights = {p.untyped_storage().data_ptr() for p in denoiser.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:  # the weights are resident anyway
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with _PeakRSS() as peak:
        start = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                prediction = denoiser(*inputs)
            loss = F.mse_loss(prediction.float(), torch.randn_like(prediction.float()))
        held = sum(saved.values())
        loss.backward()
        seconds = time.perf_counter() - start
    trainable = sum(p.numel() for p in denoiser.trainable_parameters().values())
    return {
        "side": side,
        "checkpointing": checkpointing,
        "saved_for_backward_gib": held / GIB,
        "step_peak_above_model_gib": (peak.value - before) / GIB,
        "gradients_gib": trainable * 4 / GIB,
        "model_rss_gib": before / GIB,
        "seconds": seconds,
        "threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()),
    }


class _PeakRSS:
    """The largest resident set size seen while the block runs."""

    def __enter__(self) -> _PeakRSS:
        self.value, self._running = _rss(), True
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while self._running:
            self.value = max(self.value, _rss())
            time.sleep(0.002)

    def __exit__(self, *exc: object) -> None:
        self._running = False
        self._thread.join()
        self.value = max(self.value, _rss())


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[256, 384])
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--child", nargs=2, metavar=("SIDE", "CHECKPOINTING"), help="internal")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(step_memory(int(args.child[0]), args.child[1] == "on")))
        return
    counts = parameter_counts()
    for name, count in counts.items():
        print(f"{name:<45}{count / 1e6:>10.1f} M")
    steps = []
    for side in args.sides:
        for checkpointing in ("off", "on"):
            command = [sys.executable, __file__, "--child", str(side), checkpointing]
            run = subprocess.run(command, check=True, capture_output=True, text=True, env=ENV)
            result = json.loads(run.stdout.splitlines()[-1])
            steps.append(result)
            print(
                f"side {side}, checkpointing {checkpointing}: saved for backward "
                f"{result['saved_for_backward_gib']:.2f} GiB, step peak above the model "
                f"{result['step_peak_above_model_gib']:.2f} GiB (gradients "
                f"{result['gradients_gib']:.2f}), {result['seconds']:.0f} s, load "
                f"{result['load_average'][0]:.1f}",
                flush=True,
            )
    plan = memory_plan(counts, steps)
    print(plan)
    if args.json:
        record = {"parameters": counts, "steps": steps, "plan": plan}
        args.json.write_text(json.dumps(record, indent=2) + "\n")


FROZEN_EXTRAS = ("VAE (SD-2)", "text encoder (OpenCLIP ViT-H/14 text)",
                 "CLIP ViT-L/14 (vision and text)", "depth: DPT-Hybrid",
                 "segmentation: UperNet-ConvNeXt-small", "HED (VGG16)")  # fmt: skip


def memory_plan(counts: dict[str, int], steps: list[dict], side: int = 512) -> str:
    """GiB per GPU of the trainer as it holds the model, at ``side`` px and each micro-batch.

    Static: the denoiser in float32 (the frozen backbone and the trainable part), the
    trainable part's gradients and AdamW's two moments (float32), the other frozen networks
    in bfloat16. Activations: what autograd holds for the backward pass, ``a + b * pixels``
    fitted through the two measured sides (``a`` is what does not grow with the image:
    autocast's bfloat16 copies of the trainable weights), times the micro-batch for ``b``.
    """
    trainable = counts["trainable (ControlNet + CSM + MSFM)"]
    denoiser = counts["denoiser (U-Net + ControlNet + new modules)"]
    frozen_bf16 = sum(counts[name] for name in FROZEN_EXTRAS)
    static = (denoiser * 4 + trainable * 4 * 3 + frozen_bf16 * 2) / GIB
    lines = [f"static: {static:.1f} GiB (+{trainable * 4 / GIB:.1f} with an EMA)"]
    for checkpointing in (False, True):
        measured = sorted(
            (s["side"] ** 2, s["saved_for_backward_gib"])
            for s in steps
            if s["checkpointing"] == checkpointing
        )
        if len(measured) < 2:
            continue
        (p0, g0), (p1, g1) = measured[0], measured[-1]
        per_pixel = (g1 - g0) / (p1 - p0)
        fixed = g0 - per_pixel * p0
        sample = per_pixel * side**2
        totals = ", ".join(
            f"{micro}: {static + fixed + micro * sample:.1f}" for micro in (1, 4, 8, 16)
        )
        lines.append(
            f"checkpointing {'on' if checkpointing else 'off'}: {fixed:.2f} GiB fixed + "
            f"{sample:.2f} GiB per {side} px sample; total GiB by micro-batch {totals}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
