"""One-command local mode: an embedded Redis, local storage, the gateway and one worker.

:class:`LocalService` owns three things and stops them in reverse order: the gateway
(uvicorn, in a thread of this process), the worker (``megasr worker`` in a child process of
its own session, so a Ctrl-C in the terminal reaches only us and we stop it in order, after
the gateway) and the Redis server (a child of its own session too). Nothing is left running
after :meth:`LocalService.stop`.

While it waits, it reads the workers' engine announcements from Redis and says each change
(:mod:`megasr.cli.serve_log`), so a user sees the worker loading and then ready.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

from redis import Redis
from redis.exceptions import RedisError

from megasr.cli.serve_log import EngineWatch, ServeLog
from megasr.embedded_redis import EmbeddedRedis
from megasr.engine_status import read_engines
from megasr.errors import ServiceUnavailableError
from megasr.settings import Settings

# How long a stopping worker may finish the batch in hand (RQ's warm shutdown) before it is
# told again (RQ's cold shutdown: it stops at the next Python step, after the engine call in
# progress) and then, if it still runs, killed; its jobs are then handed back at once. With
# the gateway's bound, Ctrl-C ends within 10 s (docs/service.md).
WORKER_WARM_S = 4.0
WORKER_COLD_S = 3.0
GATEWAY_GRACE_S = 1
GATEWAY_START_TIMEOUT_S = 30.0


class LocalService:
    """Start with :meth:`start` (returns the URL), then :meth:`wait`, then :meth:`stop`."""

    def __init__(
        self,
        settings: Settings,
        host: str,
        port: int,
        worker_port: int,
        log: ServeLog | None = None,
    ) -> None:
        self.settings = settings.model_copy(update={"auth_enabled": False})
        self.log = log or ServeLog()
        self.host = host
        self.port = port
        self.worker_port = worker_port
        self.redis: EmbeddedRedis | None = None
        self.worker: subprocess.Popen | None = None
        self.server = None
        self.thread: threading.Thread | None = None
        self.stopping = threading.Event()

    def start(self) -> str:
        try:
            if self.settings.redis_url is None:
                self.redis = EmbeddedRedis(self.settings.data_dir / "redis").start()
                self.settings = self.settings.model_copy(update={"redis_url": self.redis.url})
                self.log.say(f"Redis up, data in {self.settings.data_dir}")
            self.worker = self._start_worker()
            engines = ", ".join(self.settings.worker_engines)
            self.log.say(f"worker started (pid {self.worker.pid}), to load: {engines}")
            url = self._start_gateway()
            self.log.say(f"gateway up at {url}: uploads are accepted and queued from now on")
            return url
        except BaseException:
            self.stop()
            raise

    def wait(self) -> int:
        """Block until :meth:`request_stop` (a signal) or the worker dies; the exit status.
        Meanwhile say how the worker's engines are doing."""
        watch = EngineWatch(self.log)
        with Redis.from_url(str(self.settings.redis_url), socket_timeout=5) as connection:
            while not self.stopping.wait(0.5):
                with contextlib.suppress(RedisError):  # Redis may be stopping with us
                    watch.update(read_engines(connection))
                if self.worker is not None and self.worker.poll() is not None:
                    self.log.say(f"the worker exited ({self.worker.returncode})")
                    return 1
                if self.thread is not None and not self.thread.is_alive():
                    self.log.say("the gateway stopped")
                    return 1
        return 0

    def request_stop(self, *_: object) -> None:
        """Signal-handler safe: only sets a flag that :meth:`wait` watches."""
        self.stopping.set()

    def stop(self) -> None:
        """Gateway first (no new jobs), then the worker (it finishes its batch if it can in
        :data:`WORKER_WARM_S`, else its jobs go back to the queue), then Redis; each step says
        how long it took."""
        if self.server is not None:
            self.server.should_exit = True
        if self.thread is not None:
            with self._timed("gateway"):
                self.thread.join()
        if self.worker is not None:
            with self._timed("worker"):
                self._stop_worker(self.worker)
        if self.redis is not None:
            with self._timed("Redis (saved)"):
                self.redis.stop()

    def _stop_worker(self, process: subprocess.Popen) -> None:
        if process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)  # finish the batch in hand, take no new job
        if _exited(process, WORKER_WARM_S):
            return
        self.log.say("the worker is still busy: stopping it now and handing its jobs back")
        process.send_signal(signal.SIGTERM)  # RQ's cold shutdown
        if not _exited(process, WORKER_COLD_S):
            process.kill()
            process.wait()
        self._hand_back()

    def _hand_back(self) -> None:
        """The stopped worker's jobs back in their queues, retries kept (a restart runs them)."""
        from megasr.queue import EngineQueues, redis_connection
        from megasr.recovery import hand_back

        with redis_connection(self.settings) as connection:
            queues = EngineQueues(self.settings, connection).all()
            handed = sum(hand_back(queue) for queue in queues)
        self.log.say(f"{handed} job(s) handed back to the queue; they run at the next start")

    @contextlib.contextmanager
    def _timed(self, part: str) -> Iterator[None]:
        began = self.log.elapsed()
        yield
        self.log.say(f"{part} stopped in {self.log.elapsed() - began:.1f} s")

    def _start_worker(self) -> subprocess.Popen:
        env = dict(os.environ)
        env.update(
            {
                "MEGASR_REDIS_URL": str(self.settings.redis_url),
                "MEGASR_DATA_DIR": str(self.settings.data_dir),
                "MEGASR_STORAGE_BACKEND": self.settings.storage_backend,
                "MEGASR_WORKER_ENGINES": json.dumps(self.settings.worker_engines),
            }
        )
        command = [sys.executable, "-m", "megasr.cli.main", "worker"]
        command += ["--port", str(self.worker_port)]
        return subprocess.Popen(command, env=env, start_new_session=True)

    def _start_gateway(self) -> str:
        import uvicorn

        from megasr.service import create_app

        config = uvicorn.Config(
            create_app(self.settings),
            host=self.host,
            port=self.port,
            log_level="warning",
            timeout_graceful_shutdown=GATEWAY_GRACE_S,  # a request still open is cut then
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="gateway", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + GATEWAY_START_TIMEOUT_S
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise ServiceUnavailableError(f"the gateway did not start on port {self.port}")
            time.sleep(0.05)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://{self.host}:{port}"


def _exited(process: subprocess.Popen, timeout_s: float) -> bool:
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        return False
    return True
