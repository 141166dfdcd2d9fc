"""A webhook receiver for the tests: a real HTTP server on loopback."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class WebhookReceiver:
    """A real HTTP endpoint on loopback that answers 503 to each job's first delivery, and to
    every delivery while ``down`` is set (a receiver that is down for a while)."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        self.attempts: dict[str, int] = {}
        self.down = False
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                job_id = json.loads(body)["id"]
                receiver.attempts[job_id] = receiver.attempts.get(job_id, 0) + 1
                if receiver.attempts[job_id] == 1 or receiver.down:
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

    def accepted(self) -> dict[str, list[bytes]]:
        """The accepted deliveries' bodies, by job id."""
        by_job: dict[str, list[bytes]] = {}
        for _, body in list(self.deliveries):
            by_job.setdefault(json.loads(body)["id"], []).append(body)
        return by_job

    def bodies(self, secret: str) -> dict[str, dict]:
        """Each delivered job's JSON by id, after checking every signature against ``secret``."""
        views = {}
        for headers, body in self.deliveries:
            expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
            assert hmac.compare_digest(headers["x-megasr-signature"], expected)
            view = json.loads(body)
            views[view["id"]] = view
        return views
