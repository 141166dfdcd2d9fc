"""What a worker process holds for its whole life: engines, storage, metrics, webhooks.

Built once from the settings; ``megasr worker`` builds it, loads the engines and hands it to
the batching worker. A job run by a plain ``rq worker`` gets the process-wide one from
:func:`get_runtime`, built (engines loaded and warmed up) by the first job.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from rq.job import Job

from megasr.jobs import JobPayload
from megasr.settings import Settings, get_settings
from megasr.storage import Storage, create_storage
from megasr.webhooks.notifications import JobNotifier
from megasr.worker.engine_runner import EngineRunner
from megasr.worker.engines import EnginePool
from megasr.worker.prometheus import WorkerMetrics
from megasr.worker.storage_retry import RetryingStorage
from megasr.worker.upscale_job import UpscaleJob


@dataclass
class WorkerRuntime:
    """The long-lived parts of a worker process."""

    settings: Settings
    storage: Storage
    engines: EnginePool
    metrics: WorkerMetrics
    runner: EngineRunner
    notifier: JobNotifier

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkerRuntime:
        """Everything but the engines' weights (call ``engines.load()`` next)."""
        engines = EnginePool(settings)
        metrics = WorkerMetrics(engines.device)
        storage = RetryingStorage(
            create_storage(settings), settings.storage_retry_s, metrics.storage_retries.inc
        )
        return cls(
            settings=settings,
            storage=storage,
            engines=engines,
            metrics=metrics,
            runner=EngineRunner(metrics),
            notifier=JobNotifier.from_settings(settings, storage),
        )

    def load_engines(self, on_change: Callable[[], None] | None = None) -> WorkerRuntime:
        """Load and warm up every engine (see :meth:`EnginePool.load`)."""
        self.engines.load(on_change)
        for name in self.engines.slots:
            self.metrics.engine_ready(name)
        return self

    def new_job(
        self,
        payload: JobPayload,
        job: Job | None = None,
        save_meta: Callable[[Job], object] | None = None,
    ) -> UpscaleJob:
        return UpscaleJob(
            payload, self.settings, self.storage, self.engines, self.metrics, job, save_meta
        )

    def close(self) -> None:
        """Wait for webhooks still being delivered."""
        self.notifier.close()


_runtime: WorkerRuntime | None = None
_runtime_lock = threading.Lock()


def get_runtime() -> WorkerRuntime:
    """The process-wide runtime for jobs run outside ``megasr worker``, loaded on first use."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = WorkerRuntime.from_settings(get_settings()).load_engines()
        return _runtime
