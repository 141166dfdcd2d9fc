"""How long Ctrl-C of ``megasr serve`` takes: idle, and with a batch that cannot finish.

Starts ``megasr serve`` (the tiny test engine of ``tests/worker_engines.py`` on the CPU, a
fresh data folder each time), waits until its worker is ready, and for the busy case holds
an engine call (``MEGASR_TEST_HOLD``) with a job in it, as a large image on a CPU would;
then sends SIGINT and prints the seconds until the process exited, with the serve log's own
stop lines (how long each part took). The worker's warm budget (4 s) dominates the busy case
by design: its job is handed back after it.

    .venv/bin/python bench/serve_stop.py
"""

from __future__ import annotations

import io
import signal
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "service")]

from PIL import Image  # noqa: E402
from service_support import wait_until, worker_env  # noqa: E402
from skimage import data  # noqa: E402
from test_serve_first_run import Serve, engine_state, upload  # noqa: E402

from megasr.client import Client  # noqa: E402
from megasr.jobs import JobStatus  # noqa: E402
from megasr.model.benchmark.machine import cpu_model, load_average  # noqa: E402


def photo() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(data.coffee()[:64, :96]).save(buffer, "PNG")
    return buffer.getvalue()


def stop_time(busy: bool) -> tuple[float, list[str]]:
    folder = Path(tempfile.mkdtemp(prefix="megasr-stop-"))
    hold = folder / "hold"
    env = worker_env("unused", folder / "data", "megasr", MEGASR_TEST_HOLD=str(hold))
    del env["MEGASR_REDIS_URL"]
    serve = Serve(folder / "data", env)
    url = serve.wait_for_url()
    wait_until(lambda: engine_state(url) == "ready", "the worker", timeout_s=300)
    if busy:
        hold.touch()
        job_id = upload(url, photo()).json()["id"]
        with Client(url) as client:
            running = lambda: client.get(job_id).status is JobStatus.RUNNING  # noqa: E731
            wait_until(running, "the job to run", timeout_s=120)
    started = time.monotonic()
    serve.process.send_signal(signal.SIGINT)
    serve.process.wait(120)
    took = time.monotonic() - started
    return took, [line for line in serve.lines if "stopp" in line or "handed" in line]


def main() -> None:
    print(f"Machine: {cpu_model()}, load average before {load_average()}")
    for busy in (False, True):
        took, lines = stop_time(busy)
        print(f"\n{'busy' if busy else 'idle'}: SIGINT to exit {took:.1f} s")
        print("\n".join(f"    {line}" for line in lines))
    print(f"\nload average after {load_average()}")


if __name__ == "__main__":
    main()
