"""The gateway's Prometheus metrics (prefix ``megasr_``, base units, no per-job labels).

Each app has its own registry, so two apps in one process (tests, benchmarks) count apart.
The queue depth is read from Redis when ``/metrics`` is scraped, not kept up to date.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from redis.exceptions import RedisError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from megasr.queue import EngineQueues
from megasr.webhooks.outbox import WebhookOutbox

UNMATCHED_ROUTE = "unmatched"
_DEPTH_HELP = "Jobs waiting in the engines' queues."


class QueueDepthCollector(Collector):
    """``megasr_queue_depth``: jobs waiting in every engine's queue, read at scrape time."""

    def __init__(self, queues: EngineQueues) -> None:
        self.queues = queues

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The name alone, so registering the collector does not query Redis."""
        yield GaugeMetricFamily("megasr_queue_depth", _DEPTH_HELP)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            depth = self.queues.depth()
        except RedisError:
            return  # Redis down: no sample beats a made-up one
        yield GaugeMetricFamily("megasr_queue_depth", _DEPTH_HELP, value=depth)


class WebhookOutboxCollector(Collector):
    """``megasr_webhooks_pending`` and ``megasr_webhook_dead_letters``, read at scrape time."""

    PENDING = ("megasr_webhooks_pending", "Webhook deliveries waiting in the outbox.")
    DEAD = ("megasr_webhook_dead_letters", "Webhook deliveries given up on, still kept.")

    def __init__(self, outbox: WebhookOutbox) -> None:
        self.outbox = outbox

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(*self.PENDING)
        yield GaugeMetricFamily(*self.DEAD)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            pending, dead = self.outbox.pending(), self.outbox.dead_count()
        except RedisError:
            return
        yield GaugeMetricFamily(*self.PENDING, value=pending)
        yield GaugeMetricFamily(*self.DEAD, value=dead)


class GatewayMetrics:
    def __init__(self, queues: EngineQueues, outbox: WebhookOutbox | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.http_requests = Counter(
            "megasr_http_requests",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.http_duration = Histogram(
            "megasr_http_request_duration_seconds",
            "HTTP request duration, until the response body is sent.",
            ["route", "method"],
            registry=self.registry,
        )
        self.jobs_submitted = Counter(
            "megasr_jobs_submitted",
            "Upscale submissions by engine and outcome.",
            ["engine", "outcome"],
            registry=self.registry,
        )
        self.uploads_in_flight = Gauge(
            "megasr_uploads_in_flight",
            "Uploads this gateway process is reading or storing.",
            registry=self.registry,
        )
        self.upload_bytes_in_flight = Gauge(
            "megasr_upload_bytes_in_flight",
            "Bytes those uploads reserved (declared Content-Length, or received when chunked).",
            registry=self.registry,
        )
        self.uploads_refused = Counter(
            "megasr_uploads_refused",
            "Uploads refused for the process's caps (busy) or cut for their deadlines.",
            ["reason"],
            registry=self.registry,
        )
        self.registry.register(QueueDepthCollector(queues))
        if outbox is not None:
            self.registry.register(WebhookOutboxCollector(outbox))


class MetricsMiddleware:
    """Counts and times every HTTP request by its route template (never the raw path)."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or UNMATCHED_ROUTE
            method = scope["method"]
            self.metrics.http_requests.labels(template, method, str(status)).inc()
            self.metrics.http_duration.labels(template, method).observe(
                time.perf_counter() - started
            )
