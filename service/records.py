"""Which tenant owns a job, kept past the RQ job itself.

RQ deletes a job when its result retention ends; this small record lives on for
``expired_record_ttl_s`` more, so the owner then reads ``expired`` (not 404) and another
tenant still reads 404: ownership is checked here before the RQ job is even looked at.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis import Redis
from redis.client import Pipeline

from megasr.settings import Settings


def record_key(job_id: str) -> str:
    return f"megasr:record:{job_id}"


@dataclass(frozen=True)
class JobRecord:
    tenant: str
    created_at: str


def save_record(pipe: Pipeline, settings: Settings, job_id: str, record: JobRecord) -> None:
    """Queue the record's writes in ``pipe`` (the submission's transaction)."""
    # Long enough for every try of the job, its retention, then the "expired" period.
    ttl = (
        settings.job_timeout_s * (settings.max_retries + 1)
        + settings.result_ttl_s
        + settings.expired_record_ttl_s
    )
    key = record_key(job_id)
    pipe.hset(key, mapping={"tenant": record.tenant, "created_at": record.created_at})
    pipe.expire(key, ttl)


def load_record(redis: Redis, job_id: str) -> JobRecord | None:
    fields = redis.hgetall(record_key(job_id))
    if not fields:
        return None
    return JobRecord(tenant=fields[b"tenant"].decode(), created_at=fields[b"created_at"].decode())
