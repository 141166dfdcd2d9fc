"""``megasr worker``: load the engines once, warm them up, then serve their queues in batches.

The worker's HTTP port (``/metrics``, ``/healthz``, ``/readyz``) opens first, so a probe sees
the process alive while weights load; ``/readyz`` turns true once every engine is warm.
``--burst`` drains the queues and exits (for tests and one-off runs). Once the worker stops
taking jobs, its probes answer 503 for ``MEGASR_WORKER_EXIT_LINGER_S`` before it exits. The
exit status is 0 after a clean stop, and 70 when the worker stopped because its device failed
(a hung engine call, a sticky CUDA error): an orchestrator restarts it.
"""

from __future__ import annotations

import argparse
import logging

from megasr.settings import Settings


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "worker",
        help="run a GPU worker that serves the job queue",
        description="Serve upscale jobs from the Redis queue, batching tiles across jobs.",
    )
    parser.add_argument(
        "--engine",
        dest="engines",
        action="append",
        metavar="NAME",
        help="an engine to load (repeatable; a registry name or module:Class); "
        "default: the settings' worker_engines",
    )
    parser.add_argument("--name", help="the RQ worker name (default: random)")
    parser.add_argument("--host", help="address of the metrics/health port")
    parser.add_argument("--port", type=int, help="the metrics/health port")
    parser.add_argument(
        "--burst", action="store_true", help="exit once the queue is empty (for tests)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Imported here: torch and the engines load only for this command.
    from megasr.cli.serve_cmd import skip_final_collection
    from megasr.queue import redis_connection
    from megasr.worker.batching import BatchingWorker
    from megasr.worker.health import EXIT_UNHEALTHY, linger
    from megasr.worker.runtime import WorkerRuntime
    from megasr.worker.status_server import StatusServer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = _settings(args)
    # A Redis restart within a lease does not cost the batch in hand.
    connection = redis_connection(settings, retry_s=settings.heartbeat_ttl_s)
    runtime = WorkerRuntime.from_settings(settings)
    worker = BatchingWorker(runtime, connection, name=args.name)
    server = StatusServer(
        settings.worker_host,
        settings.worker_metrics_port,
        runtime.metrics,
        worker.health,
        engines_ready=lambda: runtime.engines.ready,
    ).start()
    print(f"megasr worker {worker.name}: metrics and probes on {server.url}", flush=True)
    try:
        runtime.load_engines(on_change=worker.announce_engines)
        worker.listen(runtime.engines.slots)
        worker.work(burst=args.burst, logging_level="INFO")
        linger(worker.health, settings.worker_exit_linger_s)  # 503 where a probe can see it
    finally:
        server.close()
        runtime.close()
        skip_final_collection()  # a stopping worker exits seconds sooner
    return EXIT_UNHEALTHY if worker.health.failed else 0


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.with_overrides(
        worker_engines=args.engines, worker_host=args.host, worker_metrics_port=args.port
    )
