"""A webhook receiver for the tests: a real HTTP server on loopback."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from megasr.webhook_signature import verify

# Where a test's receivers listen: settings must let loopback through the address check.
LOOPBACK_NETWORKS = ["127.0.0.0/8"]


class WebhookReceiver:
    """A real HTTP endpoint on loopback that answers 503 to each job's first delivery."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        self.attempts: dict[str, int] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                job_id = json.loads(body)["id"]
                receiver.attempts[job_id] = receiver.attempts.get(job_id, 0) + 1
                if receiver.attempts[job_id] == 1:
                    self.send_response(503)
                else:
                    receiver.deliveries.append(
                        ({k.lower(): v for k, v in self.headers.items()}, body)
                    )
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def bodies(self, secret: str) -> dict[str, dict]:
        """Each delivered job's JSON by id, after checking every signature against ``secret``."""
        views = {}
        for headers, body in self.deliveries:
            verify(body, headers, secret)  # raises on a bad signature or an old timestamp
            view = json.loads(body)
            views[view["id"]] = view
        return views
