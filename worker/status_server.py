"""The worker's own HTTP port: ``/metrics``, ``/healthz`` and ``/readyz``.

A worker speaks RQ, not HTTP, so this is a small threaded server from the standard library
that runs beside the work loop. ``/readyz`` turns true only once every engine is loaded and
warmed up, so an orchestrator sends no traffic to a worker still loading weights (a worker
takes work from the queue, but a readiness gate still keeps rollouts honest). ``/healthz``
answers 503 with the reason once the worker is unhealthy (:mod:`.health`), so a liveness
probe restarts it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST

from megasr.errors import ServiceUnavailableError
from megasr.worker.prometheus import WorkerMetrics


class StatusServer:
    """Serves the three endpoints from a daemon thread until :meth:`close`."""

    def __init__(
        self,
        host: str,
        port: int,
        metrics: WorkerMetrics,
        is_ready: Callable[[], bool],
        problem: Callable[[], str | None] = lambda: None,
    ) -> None:
        handler = _handler_class(metrics, is_ready, problem)
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
    metrics: WorkerMetrics, is_ready: Callable[[], bool], problem: Callable[[], str | None]
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "megasr-worker"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(HTTPStatus.OK, metrics.exposition(), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                if (reason := problem()) is None:
                    self._json(HTTPStatus.OK, {"status": "ok"})
                else:
                    self._json(
                        HTTPStatus.SERVICE_UNAVAILABLE, {"status": "unhealthy", "detail": reason}
                    )
            elif path == "/readyz":
                ready = is_ready()
                status = HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE
                self._json(status, {"status": "ready" if ready else "loading"})
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
