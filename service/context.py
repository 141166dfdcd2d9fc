"""Everything a request handler needs, built once per app from the settings."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request
from redis import Redis

from megasr.queue import EngineQueues, redis_connection
from megasr.service.auth import ApiKeys
from megasr.service.durability import Durability
from megasr.service.prometheus import GatewayMetrics
from megasr.service.upload_gate import UploadGate
from megasr.settings import Settings
from megasr.storage import Storage, create_storage
from megasr.webhooks.notifications import JobNotifier
from megasr.webhooks.outbox import WebhookOutbox

# A gateway command that takes longer than this means Redis is in trouble: answer 503.
REDIS_SOCKET_TIMEOUT_S = 5.0


@dataclass
class Gateway:
    """The gateway's connections and helpers, shared by every request of one app."""

    settings: Settings
    redis: Redis
    queues: EngineQueues
    storage: Storage
    metrics: GatewayMetrics
    api_keys: ApiKeys
    notifier: JobNotifier  # webhooks of the jobs that end here, not in a worker
    durability: Durability  # a 202 waits until its job is on Redis's disk
    uploads: UploadGate  # this process's caps and deadlines on upload bodies

    @classmethod
    def from_settings(cls, settings: Settings) -> Gateway:
        redis = redis_connection(settings, socket_timeout=REDIS_SOCKET_TIMEOUT_S)
        queues = EngineQueues(settings, redis)
        storage = create_storage(settings)
        metrics = GatewayMetrics(queues, WebhookOutbox(redis, settings.queue_name))
        return cls(
            settings=settings,
            redis=redis,
            queues=queues,
            storage=storage,
            metrics=metrics,
            api_keys=ApiKeys.from_settings(settings),
            notifier=JobNotifier.from_settings(settings, storage, redis),
            durability=Durability(settings.submit_fsync_timeout_ms),
            uploads=UploadGate(settings, metrics),
        )

    def close(self) -> None:
        self.notifier.close()
        self.redis.close()


def gateway(request: Request) -> Gateway:
    """FastAPI dependency: the app's :class:`Gateway`."""
    return request.app.state.gateway
