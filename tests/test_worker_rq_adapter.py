"""The worker's contract with RQ (``megasr.worker.rq_adapter``), checked against the installed RQ.

The adapter is the only module that overrides RQ's worker hooks or reaches RQ's private
names, and it lists both. These tests fail, naming the hook or the name, when an RQ upgrade
renames one, changes its parameters, or moves it out of the place in RQ's flow the worker
relies on (the transaction that writes a job's end, the warm shutdown, the loop's stop
flag). They run RQ's own code on a real Redis; nothing is mocked.
"""

from __future__ import annotations

import ast
import inspect
import signal
from collections.abc import Iterator
from pathlib import Path
from types import FunctionType

import pytest
from redis import Redis
from rq.command import send_command
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.worker import SimpleWorker
from worker_support import wait_for

from megasr.embedded_redis import EmbeddedRedis
from megasr.queue import JOB_SERIALIZER, redis_connection
from megasr.settings import Settings
from megasr.worker import rq_adapter
from megasr.worker.rq_adapter import HOOKS, PRIVATE_NAMES, EngineQueue, RQWorker

WORKER_SOURCE = Path(rq_adapter.__file__).resolve().parent


class Events:
    """Records what the adapter tells the scheduler; ``ending`` writes a marker key inside the
    transaction it is given and notes what that transaction already held."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []
        self.endings: list[dict] = []

    def started(self) -> None:
        self.calls.append(("started", None))

    def draining(self) -> None:
        self.calls.append(("draining", None))

    def stopped(self) -> None:
        self.calls.append(("stopped", None))

    def run(self, job: Job, queue: Queue) -> None:
        self.calls.append(("run", job.id))

    def stop_job(self, job_id: str) -> None:
        self.calls.append(("stop_job", job_id))

    def announce(self, client) -> None:
        self.calls.append(("announce", None))

    def ending(self, job: Job, pipeline) -> None:
        queued = [tuple(_text(a) for a in args) for args, _ in pipeline.command_stack]
        self.endings.append({"job": job.id, "transaction": pipeline.transaction, "queued": queued})
        pipeline.set(f"test:ended:{job.id}", "1")

    def named(self, name: str) -> list[object]:
        return [value for call, value in self.calls if call == name]


def _text(value: object) -> object:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    with EmbeddedRedis(tmp_path_factory.mktemp("rq-adapter")) as server:
        yield redis_connection(Settings(redis_url=server.url))


@pytest.fixture
def queue(redis: Redis, request: pytest.FixtureRequest) -> Queue:
    return Queue(f"adapter-{request.node.name}", connection=redis, serializer=JOB_SERIALIZER)


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
def worker(redis: Redis, queue: Queue, events: Events) -> Iterator[RQWorker]:
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    worker = RQWorker(
        redis,
        events,
        name=f"adapter-{queue.name}",
        worker_ttl_s=60,
        maintenance_interval_s=3600,
        lease_s=30,
        exception_handlers=[],
        is_batched=lambda job: True,
    )
    worker.listen([queue])
    yield worker
    for sig, handler in handlers.items():  # RQ's work() and request_stop() install their own
        signal.signal(sig, handler)


def started_job(worker: RQWorker, queue: Queue) -> tuple[Job, object]:
    """A job started by ``worker`` the way RQ starts one (execution, started registry)."""
    job = queue.enqueue("os.getpid")
    taken, _ = worker.dequeue(1.0)
    assert taken.id == job.id
    execution = worker.prepare_execution(taken)
    worker.prepare_job_execution(taken, remove_from_intermediate_queue=True)
    return taken, execution


# -- names and signatures ---------------------------------------------------------------------


RQ_CLASSES = {"SimpleWorker": SimpleWorker, "Queue": Queue}
ADAPTERS = {"SimpleWorker": RQWorker, "Queue": EngineQueue}


@pytest.mark.parametrize("hook", sorted(HOOKS))
def test_each_overridden_hook_is_rqs_with_the_same_parameters(hook: str) -> None:
    owner, name = hook.split(".")
    rq_method = getattr(RQ_CLASSES[owner], name, None)
    assert callable(rq_method), f"RQ's {owner} has no hook {name!r} any more"
    parameters = tuple(inspect.signature(rq_method).parameters)
    assert parameters == HOOKS[hook], f"RQ's {hook} now takes {parameters}, not {HOOKS[hook]}"


@pytest.mark.parametrize("owner", sorted(ADAPTERS))
def test_every_override_is_listed(owner: str) -> None:
    rq_class = RQ_CLASSES[owner]
    overrides = {
        f"{owner}.{name}"
        for name, value in vars(ADAPTERS[owner]).items()
        if isinstance(value, FunctionType | classmethod)
        and not name.startswith("__")
        and hasattr(rq_class, name)
    }
    listed = {hook for hook in HOOKS if hook.startswith(f"{owner}.")}
    assert overrides == listed, f"list every {owner} hook the adapter overrides in HOOKS"


@pytest.mark.parametrize("name", sorted(PRIVATE_NAMES))
def test_each_private_name_exists_in_rq(name: str, redis: Redis, queue: Queue) -> None:
    owner, attribute = name.split(".")
    instances = {
        "SimpleWorker": SimpleWorker([queue], connection=redis),
        "Queue": queue,
        "Job": Job.create("os.getpid", connection=redis, serializer=JOB_SERIALIZER),
    }
    instance = instances[owner]
    assert hasattr(instance, attribute), f"RQ's {owner} has no {attribute!r} any more"
    expected = PRIVATE_NAMES[name]
    if expected is not None:
        parameters = tuple(inspect.signature(getattr(instance, attribute)).parameters)
        parameters = parameters if "self" not in expected else ("self", *parameters)
        assert parameters == expected, f"RQ's {name} now takes {parameters}, not {expected}"


def test_only_the_adapter_reaches_rq_private_names(redis: Redis, queue: Queue) -> None:
    """Outside ``rq_adapter.py`` no worker module uses a private name of RQ's worker, queue or
    job, or subclasses an RQ worker; inside it, every such name used is listed."""
    rq_private = _private_names(
        SimpleWorker([queue], connection=redis),
        queue,
        Job.create("os.getpid", connection=redis, serializer=JOB_SERIALIZER),
    )
    for path in sorted(WORKER_SOURCE.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        used = _private_attributes(tree) & rq_private
        if path.name == "rq_adapter.py":
            listed = {name.split(".")[1] for name in PRIVATE_NAMES}
            assert used == listed, f"rq_adapter.py uses {used}; PRIVATE_NAMES lists {listed}"
        else:
            assert not used, f"{path.name} reaches RQ's private names {used}"
            assert not _subclasses_rq_worker(tree), f"{path.name} subclasses an RQ worker"


def _private_names(*objects: object) -> set[str]:
    """The private (one underscore) names of these objects and their classes."""
    names = set()
    for item in objects:
        names |= set(dir(item)) | set(vars(item))
    return {name for name in names if name.startswith("_") and not name.startswith("__")}


def _private_attributes(tree: ast.Module) -> set[str]:
    """Every ``x._name`` in a module."""
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
    }


def _subclasses_rq_worker(tree: ast.Module) -> bool:
    imported = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rq.worker")
        for alias in node.names
    }
    return any(
        isinstance(base, ast.Name) and base.id in imported
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
        for base in node.bases
    )


# -- each hook where the worker relies on it --------------------------------------------------


def test_a_success_is_written_in_one_transaction_with_the_ending_writes(worker, queue, events):
    job, execution = started_job(worker, queue)
    worker.end_succeeded(job, queue, execution, {"key": "outputs/x.png"})

    assert job.get_status(refresh=True) == JobStatus.FINISHED
    assert job.latest_result().return_value == {"key": "outputs/x.png"}
    _assert_ended_in_one_transaction(worker, queue, events, job, "finished")


def test_a_failure_is_written_in_one_transaction_with_the_ending_writes(worker, queue, events):
    job, execution = started_job(worker, queue)
    worker.end_failed(job, queue, execution, RuntimeError("engine failed"))

    assert job.get_status(refresh=True) == JobStatus.FAILED
    assert job.id in queue.failed_job_registry.get_job_ids()
    _assert_ended_in_one_transaction(worker, queue, events, job, "failed")


def test_a_stop_is_written_in_one_transaction_with_the_ending_writes(worker, queue, events):
    job, execution = started_job(worker, queue)
    worker.end_stopped(job, queue, execution)

    assert job.get_status(refresh=True) == JobStatus.STOPPED
    _assert_ended_in_one_transaction(worker, queue, events, job, "stopped")


def test_a_cancel_is_written_in_one_transaction_with_the_ending_writes(worker, queue, events):
    job, execution = started_job(worker, queue)
    job.meta["stage"] = "canceled"
    worker.end_canceled(job, execution, job.serializer.dumps(job.meta))

    assert job.get_status(refresh=True) == JobStatus.CANCELED
    assert job.get_meta(refresh=True)["stage"] == "canceled"
    _assert_ended_in_one_transaction(worker, queue, events, job, "canceled")


def _assert_ended_in_one_transaction(worker, queue, events, job: Job, status: str) -> None:
    """RQ called ``cleanup_execution`` inside the transaction that wrote ``status``: the
    marker the ending wrote there is in Redis, and the status write was queued before it
    in the same MULTI/EXEC pipeline."""
    (ending,) = [e for e in events.endings if e["job"] == job.id]
    assert ending["transaction"], "cleanup_execution was called outside a transaction"
    assert ("HSET", job.key, "status", status) in ending["queued"], ending["queued"]
    assert worker.connection.get(f"test:ended:{job.id}") == b"1"
    assert job.id not in queue.started_job_registry.get_job_ids(cleanup=False)
    assert worker.executions == {}


def test_sigterm_while_busy_drains_and_ends_the_loop_after_the_batch(worker, events) -> None:
    worker.set_state("busy")
    worker.request_stop(signal.SIGTERM, None)  # RQ's own SIGTERM handler

    assert events.named("draining") == [None], "handle_warm_shutdown_request was not called"
    assert worker.stop_requested, "RQ's _stop_requested no longer records a warm shutdown"


def test_stop_after_batch_ends_rqs_loop_before_it_takes_a_job(worker, queue, events) -> None:
    job = queue.enqueue("os.getpid")
    worker.stop_after_batch()
    worker.work(burst=False, logging_level="WARNING")

    assert events.named("started") and events.named("stopped")
    assert not events.named("run"), "RQ's loop took a job after _stop_requested was set"
    assert job.get_status(refresh=True) == JobStatus.QUEUED


def test_rqs_loop_hands_each_job_to_run_and_announces_with_its_heartbeat(worker, queue, events):
    jobs = [queue.enqueue("os.getpid") for _ in range(2)]
    worker.work(burst=True, logging_level="WARNING")

    assert events.named("run") == [job.id for job in jobs]
    assert events.named("announce"), "the heartbeat hook was not called"
    assert events.named("started") and events.named("stopped")


def test_a_stop_job_command_reaches_the_scheduler_for_any_job(worker, events) -> None:
    worker.subscribe()
    try:
        send_command(worker.connection, worker.name, "stop-job", job_id="j1")
        wait_for(lambda: events.named("stop_job"), "the stop-job command")
    finally:
        worker.unsubscribe()

    assert events.named("stop_job") == ["j1"]


def test_a_job_handed_back_goes_to_the_front_of_its_queue(worker, queue) -> None:
    job, execution = started_job(worker, queue)
    later = queue.enqueue("os.getpid")
    worker.hand_back(job, queue, execution, {"megasr_alone": "1"})

    assert queue.job_ids == [job.id, later.id]
    assert job.get_status(refresh=True) == JobStatus.QUEUED
    assert worker.connection.hget(job.key, "megasr_alone") == b"1"
    assert job.id not in queue.started_job_registry.get_job_ids(cleanup=False)


def test_the_registry_cleanup_calls_the_exception_handlers_for_an_abandoned_job(redis, queue):
    seen: list[str] = []
    worker = RQWorker(
        redis,
        Events(),
        name=f"cleaner-{queue.name}",
        worker_ttl_s=60,
        maintenance_interval_s=3600,
        lease_s=0,
        exception_handlers=[lambda job, *exc_info: seen.append(job.id) or True],
        is_batched=lambda job: True,
    )
    worker.listen([queue])
    job, execution = started_job(worker, queue)
    redis.zadd(queue.started_job_registry.key, {execution.composite_key: 1})  # lease long over
    worker.clean_registries()

    assert seen == [job.id]
    assert job.get_status(refresh=True) == JobStatus.FAILED
