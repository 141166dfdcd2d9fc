"""``megasr serve`` as a first-time user meets it: the page's URL is printed before the
worker has loaded its engine, and an upload sent at that moment (or while the worker is
still loading) is accepted, queued and run once the engine is ready. The worker's engine is
held in its loading state by a file (:class:`worker_engines.SlowLoadingEngine`), the way a
real engine's minutes of loading and compiling on a CPU would hold it, with no sleeps."""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
from service_support import free_port, wait_until, worker_env

from megasr.client import Client
from megasr.jobs import JobStatus

URL_LINE = re.compile(r"running at (http://\S+)")


class Serve:
    """``megasr serve`` in a child process, its merged output read line by line as it comes."""

    def __init__(self, data: Path, env: dict[str, str]) -> None:
        command = [sys.executable, "-m", "megasr.cli.main", "serve", "--port", "0"]
        command += ["--worker-port", str(free_port()), "--data-dir", str(data)]
        self.process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        self._new: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            self._new.put(line)
        self._new.put(None)

    def wait_for_url(self, timeout_s: float = 120) -> str:
        """The URL, returned the moment its line is printed."""
        while (line := self._new.get(timeout=timeout_s)) is not None:
            if match := URL_LINE.search(line):
                return match.group(1)
        raise AssertionError("megasr serve exited before printing its URL:\n" + self.log)

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(60)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()


def upload(url: str, photo: bytes) -> httpx.Response:
    files = {"image": ("photo.png", photo, "image/png")}
    return httpx.post(f"{url}/v1/upscale", files=files, data={"scale": "2"}, timeout=30)


def engine_state(url: str) -> str | None:
    engines = httpx.get(f"{url}/v1/engines", timeout=30).json()["engines"]
    return engines[0]["state"] if engines else None


def test_an_upload_sent_when_the_url_is_printed_is_accepted_and_runs(tmp_path, photo):
    hold = tmp_path / "loading"
    hold.touch()
    env = worker_env(
        "unused",
        tmp_path / "data",
        "megasr",
        MEGASR_WORKER_ENGINES='["worker_engines:SlowLoadingEngine"]',
        MEGASR_TEST_LOAD_HOLD=str(hold),
    )
    del env["MEGASR_REDIS_URL"]  # local mode starts its own
    serve = Serve(tmp_path / "data", env)
    try:
        url = serve.wait_for_url()
        at_once = upload(url, photo)
        # The case a user met most: the worker has announced itself and is loading.
        loading = lambda: engine_state(url) == "loading"  # noqa: E731
        wait_until(loading, "the worker to announce it loads", timeout_s=120)
        # serve reads the engine states twice a second: let it see the loading before the end.
        said_loading = lambda: "worker loading tiny-slow" in serve.log  # noqa: E731
        wait_until(said_loading, "serve to say the worker loads", timeout_s=30)
        while_loading = upload(url, photo)
        hold.unlink()  # the engine may finish loading now
        with Client(url) as client:
            jobs = [client.wait(r.json()["id"], timeout_s=90) for r in (at_once, while_loading)]
        # And the ready state: the jobs can end before serve has read it.
        said_ready = lambda: "ready: queued and new uploads run now" in serve.log  # noqa: E731
        wait_until(said_ready, "serve to say the worker is ready", timeout_s=30)
    finally:
        status = serve.stop()

    assert at_once.status_code == 202, at_once.text
    assert while_loading.status_code == 202, while_loading.text
    assert [job.status for job in jobs] == [JobStatus.SUCCEEDED] * 2
    assert status == 0, serve.log
    log = serve.log
    order = [
        "gateway up at",
        "running at",
        "worker loading tiny-slow (uploads are queued meanwhile)",
        "worker ready with tiny-slow, loaded in",
        "ready: queued and new uploads run now",
        "stopping: the gateway, then the worker, then Redis",
        "worker stopped in",
    ]
    positions = [log.find(text) for text in order]
    assert -1 not in positions and positions == sorted(positions), log
    assert re.search(r"megasr \[\s*\d+\.\d s\] worker ready with tiny-slow", log), log


def test_ctrl_c_mid_batch_hands_the_job_back_and_the_next_start_runs_it(tmp_path, photo):
    """The engine call is held (``MEGASR_TEST_HOLD``) when Ctrl-C comes: the worker cannot
    finish its batch, so it is stopped and its job goes back to the queue, and a second
    ``megasr serve`` on the same data folder runs it."""
    hold = tmp_path / "engine-call"
    env = worker_env("unused", tmp_path / "data", "megasr", MEGASR_TEST_HOLD=str(hold))
    del env["MEGASR_REDIS_URL"]
    first = Serve(tmp_path / "data", env)
    try:
        url = first.wait_for_url()
        ready = lambda: engine_state(url) == "ready"  # noqa: E731
        wait_until(ready, "the worker to load (its warm-up runs the engine)", timeout_s=120)
        hold.touch()
        job_id = upload(url, photo).json()["id"]
        with Client(url) as client:
            running = lambda: client.get(job_id).status is JobStatus.RUNNING  # noqa: E731
            wait_until(running, "the worker to take the job")
    finally:
        first_status = first.stop()
    hold.unlink()
    second = Serve(tmp_path / "data", env)
    try:
        with Client(second.wait_for_url()) as client:
            job = client.wait(job_id, timeout_s=90)
    finally:
        second.stop()

    assert first_status == 0, first.log
    assert "the worker is still busy: stopping it now and handing its jobs back" in first.log
    assert "1 job(s) handed back to the queue; they run at the next start" in first.log
    assert job.status is JobStatus.SUCCEEDED, second.log
