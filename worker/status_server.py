"""The worker's own HTTP port: ``/metrics``, ``/healthz`` and ``/readyz``.

A worker speaks RQ, not HTTP, so this is a small threaded server from the standard library
that runs beside the work loop. ``/readyz`` turns 200 only once every engine is loaded and
warmed up, so an orchestrator counts no worker still loading weights as available (a worker
takes work from the queue, but a readiness gate still keeps rollouts honest), and back to
503 once the worker drains or stops. ``/healthz`` answers 503 with the reason once the
worker is unhealthy or exiting (:mod:`.health`), so a liveness probe restarts it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST

from megasr.errors import ServiceUnavailableError
from megasr.worker.health import WorkerHealth
from megasr.worker.prometheus import WorkerMetrics


class StatusServer:
    """Serves the three endpoints from a daemon thread until :meth:`close`."""

    def __init__(
        self,
        host: str,
        port: int,
        metrics: WorkerMetrics,
        health: WorkerHealth,
        engines_ready: Callable[[], bool],
    ) -> None:
        handler = _handler_class(metrics, health, engines_ready)
        try:
            self._server = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise ServiceUnavailableError(
                f"cannot open the worker port {host}:{port}: {exc}"
            ) from exc
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="megasr-status", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> StatusServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _handler_class(
    metrics: WorkerMetrics, health: WorkerHealth, engines_ready: Callable[[], bool]
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "megasr-worker"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(HTTPStatus.OK, metrics.exposition(), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                if (reason := health.problem()) is None:
                    self._json(HTTPStatus.OK, {"status": "ok"})
                else:
                    word = "exiting" if health.exiting and not health.failed else "unhealthy"
                    self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"status": word, "detail": reason})
            elif path == "/readyz":
                readiness = health.readiness(engines_ready())
                ok = readiness == "ready"
                status = HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE
                self._json(status, {"status": readiness})
            else:
                self._json(HTTPStatus.NOT_FOUND, {"status": "not found"})

        def _json(self, status: HTTPStatus, body: dict) -> None:
            self._send(status, json.dumps(body).encode(), "application/json")

        def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:
            """Scrapes every few seconds would drown the worker's log; stay quiet."""

    return Handler
