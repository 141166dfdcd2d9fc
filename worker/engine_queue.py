"""Taking a job from several engine queues at once, always through an intermediate list.

RQ moves a dequeued job into its queue's ``:intermediate`` list (with ``BLMOVE``) only when a
worker listens on one queue; with several it pops with ``BLPOP``, and a worker that dies
between the pop and the start loses the job. A worker serving several engines listens on
several queues, so :func:`take_first` moves the first waiting job of any of them into its
queue's intermediate list in one Lua step; while all are empty it blocks on each queue in
turn for up to :data:`POLL_S`. A job is therefore always in a queue, an intermediate list
(from which :func:`megasr.recovery.recover_intermediate` requeues it if its worker died) or
the started registry. RQ's loop reaches this through the adapter's queue class
(:class:`megasr.worker.rq_adapter.EngineQueue`).
"""

from __future__ import annotations

import time
from itertools import cycle

from redis import Redis
from rq.exceptions import DequeueTimeout, NoSuchJobError
from rq.job import Job
from rq.queue import Queue
from rq.utils import as_text

# How long an idle worker of several engines blocks on one queue before looking at the next.
POLL_S = 0.2
# Redis rounds a blocking timeout below a millisecond to 0, which means "wait forever".
MIN_BLOCK_S = 0.001

_MOVE_FIRST = """
for i = 1, #KEYS, 2 do
  local job_id = redis.call('LMOVE', KEYS[i], KEYS[i + 1], 'LEFT', 'RIGHT')
  if job_id then return {KEYS[i], job_id} end
end
return false
"""


def take_first(
    queues: list[Queue], timeout: float | None, connection: Redis, job_class: type[Job]
) -> tuple[Job, Queue] | None:
    """The first waiting job of any of ``queues``, moved to its queue's intermediate list;
    waiting up to ``timeout`` (None: not at all, and None when all are empty). Raises RQ's
    :class:`DequeueTimeout` when the wait ran out, as RQ's own dequeue does."""
    by_key = {queue.key: queue for queue in queues}
    move_first = connection.register_script(_MOVE_FIRST)
    keys = [key for queue in queues for key in (queue.key, queue.intermediate_queue_key)]
    deadline = None if timeout is None else time.monotonic() + timeout
    turns = cycle(queues)
    while True:
        moved = move_first(keys=keys)
        if not moved and deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining < MIN_BLOCK_S:
                raise DequeueTimeout(timeout, list(by_key))
            queue = next(turns)
            job_id = connection.blmove(
                queue.key, queue.intermediate_queue_key, min(POLL_S, remaining)
            )
            moved = [queue.key, job_id] if job_id is not None else None
        if not moved:
            if deadline is None:
                return None
            continue
        queue = by_key[as_text(moved[0])]
        try:
            job = job_class.fetch(as_text(moved[1]), connection, serializer=queue.serializer)
        except NoSuchJobError:
            continue  # expired or deleted while it waited: take the next one
        return job, queue
