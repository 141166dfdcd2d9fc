"""What the thread count costs a HED fine-tuning step on this CPU: 1 and 2 PyTorch threads,
side by side in one process, alternating step by step, so both see the same load.

Each step is the real one (crop batch, degradation, output + side + feature distillation
loss, AdamW) at the variant table's settings (batch 4, 128-pixel crops, bfloat16 autocast
where the CPU computes it natively). Prints the median seconds per step of each thread
count, their ratio, the CPU and the load average before and after.

    .venv/bin/python bench/pgft_threads.py PHOTOS_DIR [--steps 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from megasr.model.degradation import DegradationConfig, RealESRGANDegradation
from megasr.model.degradation.draws import derived_generator
from megasr.model.device import fast_dtype
from megasr.model.training.data import CropOptions, TrainingCrops, collate, find_images
from megasr.model.training.distillation import autocast
from megasr.model.training.pgft_extractors import load_student
from megasr.model.training.pgft_session import machine_record
from megasr.settings import get_settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photos", type=Path, help="folder of training photographs")
    parser.add_argument("--steps", type=int, default=10, help="steps per thread count")
    args = parser.parse_args()
    device = torch.device("cpu")
    dtype = fast_dtype(device)
    student = load_student("hed", "bundled", get_settings().cache_dir, 1.0, 1.0)
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=5e-5, weight_decay=1e-2)
    crops = TrainingCrops(find_images([args.photos]), CropOptions(crop=128))
    degradation = RealESRGANDegradation(DegradationConfig())
    times: dict[int, list[float]] = {1: [], 2: []}
    print("before:", machine_record())
    for step in range(2 * args.steps + 2):
        threads = 1 + step % 2
        torch.set_num_threads(threads)
        hr = collate([crops[4 * step + i] for i in range(4)])["hr"]
        start = time.perf_counter()
        lr = degradation(hr, derived_generator(0, step))
        with autocast(device, dtype):
            loss = student.loss(hr, lr)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= 2:  # the first step of each count warms oneDNN up
            times[threads].append(time.perf_counter() - start)
    one, two = (statistics.median(times[t]) for t in (1, 2))
    print("after:", machine_record())
    print(f"{dtype}, {os.cpu_count()} cores: median s/step 1 thread {one:.2f}, 2 threads "
          f"{two:.2f}, ratio 2/1 {two / one:.2f} ({args.steps} steps each)")  # fmt: skip


if __name__ == "__main__":
    main()
