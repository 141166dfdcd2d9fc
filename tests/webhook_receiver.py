"""A webhook receiver for the tests: a real HTTP server on loopback."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from megasr.client import verify_webhook as verify

# Where a test's receivers listen: settings must let loopback through the address check.
LOOPBACK_NETWORKS = ["127.0.0.0/8"]


Answer = tuple[int, dict[str, str]]  # status and extra headers


def fail_first(attempt: int) -> Answer:
    """503 to a job's first delivery, 204 after: every test sees one retry."""
    return (503, {}) if attempt == 1 else (204, {})


class WebhookReceiver:
    """A real HTTP endpoint on loopback; ``answer`` decides the reply to a job's n-th POST.

    ``deliveries`` holds the (headers, body) of each POST answered 2xx, ``requests`` the
    (Host header, path) of every POST, ``webhook_ids`` the ``webhook-id`` of every POST by
    job id.
    """

    def __init__(self, answer: Callable[[int], Answer] = fail_first) -> None:
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        self.attempts: dict[str, int] = {}
        self.requests: list[tuple[str, str]] = []
        self.webhook_ids: dict[str, list[str]] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                job_id = json.loads(body)["id"]
                receiver.requests.append((self.headers["Host"], self.path))
                ids = receiver.webhook_ids.setdefault(job_id, [])
                ids.append(self.headers["webhook-id"])
                receiver.attempts[job_id] = receiver.attempts.get(job_id, 0) + 1
                status, headers = answer(receiver.attempts[job_id])
                if 200 <= status < 300:
                    receiver.deliveries.append(
                        ({k.lower(): v for k, v in self.headers.items()}, body)
                    )
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def accepted(self) -> dict[str, list[bytes]]:
        """The bodies of the deliveries answered 2xx, by job id."""
        by_job: dict[str, list[bytes]] = {}
        for _, body in list(self.deliveries):
            by_job.setdefault(json.loads(body)["id"], []).append(body)
        return by_job

    def bodies(self, secret: str) -> dict[str, dict]:
        """Each delivered job's JSON by id, after checking every signature against ``secret``."""
        views = {}
        for headers, body in self.deliveries:
            verify(body, headers, secret)  # raises on a bad signature or an old timestamp
            view = json.loads(body)
            views[view["id"]] = view
        return views
