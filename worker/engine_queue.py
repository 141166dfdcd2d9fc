"""The engine queues as a worker takes from them: every job goes through the intermediate list.

RQ moves a dequeued job into its queue's ``:intermediate`` list (with ``BLMOVE``) only when a
worker listens on one queue; with several it pops with ``BLPOP``, and a worker that dies
between the pop and the start loses the job. A worker serving several engines listens on
several queues, so :class:`EngineQueue` moves the first waiting job of any of them into its
queue's intermediate list in one Lua step; while all are empty it blocks on each queue in
turn for up to :data:`POLL_S`. A job is therefore always in a queue, an intermediate list
(from which :func:`megasr.recovery.recover_intermediate` requeues it if its worker died) or
the started registry.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from itertools import cycle

from redis import Redis
from rq.exceptions import DequeueTimeout
from rq.job import Job
from rq.queue import Queue
from rq.serializers import Serializer
from rq.timeouts import BaseDeathPenalty
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


class EngineQueue(Queue):
    """An RQ queue whose dequeue always goes through the intermediate list."""

    @classmethod
    def dequeue_any(
        cls,
        queues: Iterable[Queue],
        timeout: int | None,
        connection: Redis,
        job_class: type[Job] | None = None,
        serializer: Serializer | str | None = None,
        death_penalty_class: type[BaseDeathPenalty] | None = None,
    ) -> tuple[Job, Queue] | None:
        queues = list(queues)
        if len(queues) < 2:  # RQ's own BLMOVE
            return super().dequeue_any(
                queues, timeout, connection, job_class, serializer, death_penalty_class
            )
        move_first = connection.register_script(_MOVE_FIRST)
        keys = [key for queue in queues for key in (queue.key, queue.intermediate_queue_key)]
        deadline = None if timeout is None else time.monotonic() + timeout
        turns = cycle(queues)
        while True:
            moved = move_first(keys=keys)
            if not moved and deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining < MIN_BLOCK_S:
                    raise DequeueTimeout(timeout, [queue.key for queue in queues])
                queue = next(turns)
                job_id = connection.blmove(
                    queue.key, queue.intermediate_queue_key, min(POLL_S, remaining)
                )
                moved = [queue.key, job_id] if job_id is not None else None
            if not moved:
                if deadline is None:
                    return None
                continue
            queue_key, job_id = map(as_text, moved)
            fetched = cls._fetch_dequeued_job(
                connection, queue_key, job_id, job_class, serializer, death_penalty_class
            )
            if fetched is not None:
                return fetched
