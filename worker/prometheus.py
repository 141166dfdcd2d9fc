"""The worker's Prometheus metrics, in base units and with no per-job labels.

Each worker process owns one :class:`WorkerMetrics` with a registry of its own (not the
global one), so a test can build several side by side and the HTTP port shows exactly these
series plus the process collectors.
"""

from __future__ import annotations

import torch
from prometheus_client import (
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

STAGES = ("decode", "preprocess", "inference", "encode", "upload")
# How a job leaves a worker; "retried" means RQ queued it again after a failure.
JOB_OUTCOMES = ("succeeded", "failed", "canceled", "retried")

# Seconds: a small image decodes in milliseconds, a diffusion job may run for minutes.
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TILE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class WorkerMetrics:
    """Every series of the worker contract (see the service design's metric list)."""

    def __init__(self, device: torch.device | None = None) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(PROCESS_COLLECTOR)
        r = self.registry
        self.stage_seconds = Histogram(
            "megasr_job_stage_duration_seconds",
            "Time a job spends in each stage.",
            ["stage"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.queue_wait_seconds = Histogram(
            "megasr_job_queue_wait_seconds",
            "Time from enqueue to the start of work.",
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.batch_size_tiles = Histogram(
            "megasr_batch_size_tiles",
            "Tiles in one engine call.",
            buckets=_TILE_BUCKETS,
            registry=r,
        )
        self.tiles_processed = Counter(
            "megasr_tiles_processed_total", "Tiles run through an engine.", ["engine"], registry=r
        )
        self.input_megapixels = Counter(
            "megasr_input_megapixels_total", "Megapixels of decoded inputs.", registry=r
        )
        self.output_megapixels = Counter(
            "megasr_output_megapixels_total", "Megapixels of stored outputs.", registry=r
        )
        self.oom_retries = Counter(
            "megasr_oom_retries_total",
            "Engine calls retried at half the batch after running out of device memory.",
            registry=r,
        )
        self.nan_retries = Counter(
            "megasr_nan_retries_total",
            "Engine calls retried in float32 after NaN or Inf output.",
            registry=r,
        )
        self.engine_loaded = Gauge(
            "megasr_engine_loaded", "1 when the engine is loaded and warm.", ["engine"], registry=r
        )
        self.busy = Gauge("megasr_worker_busy", "1 while the worker runs a batch.", registry=r)
        self.storage_retries = Counter(
            "megasr_storage_retries_total",
            "Storage calls tried again because the storage could not be reached.",
            registry=r,
        )
        self.jobs_finished = Counter(
            "megasr_jobs_finished_total",
            "Jobs that left this worker, by outcome.",
            ["engine", "status"],
            registry=r,
        )
        for stage in STAGES:
            self.stage_seconds.labels(stage)  # every series exists from the start, at 0
        allocated = Gauge(
            "megasr_device_memory_allocated_bytes",
            "Device memory held by tensors (0 on the CPU).",
            registry=r,
        )
        reserved = Gauge(
            "megasr_device_memory_reserved_bytes",
            "Device memory held by the caching allocator (0 on the CPU).",
            registry=r,
        )
        allocated.set_function(lambda: _cuda_bytes(device, torch.cuda.memory_allocated))
        reserved.set_function(lambda: _cuda_bytes(device, torch.cuda.memory_reserved))

    def engine_ready(self, engine: str) -> None:
        """Mark ``engine`` loaded and start its per-engine series at 0."""
        self.engine_loaded.labels(engine).set(1)
        self.tiles_processed.labels(engine)
        for status in JOB_OUTCOMES:
            self.jobs_finished.labels(engine, status)

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)


def _cuda_bytes(device: torch.device | None, read) -> float:
    """Read a CUDA allocator counter at scrape time; other devices report 0."""
    if device is None or device.type != "cuda":
        return 0.0
    return float(read(device))
