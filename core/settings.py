"""One typed settings object for every part of the project.

Values come from, in order of precedence: keyword arguments, ``MEGASR_*`` environment
variables, then an optional TOML file named by ``MEGASR_SETTINGS_FILE``. With nothing set the
project runs locally: caches and data under the user's directories, the default engine, the
best device present.
"""

from __future__ import annotations

import ipaddress
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from megasr.errors import InvalidParameterError

Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "float32", "bfloat16", "float16"]
Backend = Literal["auto", "eager", "inductor"]


def _default_cache_dir() -> Path:
    return Path(platformdirs.user_cache_dir("megasr"))


def _default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("megasr"))


class Settings(BaseSettings):
    """Everything configurable, in one place."""

    model_config = SettingsConfigDict(env_prefix="MEGASR_", extra="ignore")

    cache_dir: Path = Field(default_factory=_default_cache_dir, description="Converted weights.")
    data_dir: Path = Field(default_factory=_default_data_dir, description="Local storage.")

    # Image limits, checked before a full decode.
    max_upload_bytes: int = Field(50 * 1024 * 1024, gt=0)
    max_input_pixels: int = Field(40_000_000, gt=0)
    max_output_pixels: int = Field(400_000_000, gt=0)

    # Engines.
    engine: str = "auto"
    megasr_model: Path | None = Field(None, description="A MegaSR checkpoint directory.")
    device: Device = "auto"
    dtype: Precision = "auto"
    tile: int = Field(
        0,
        ge=0,
        description="Engine tile side in pixels (megasr: latent tile, output px); 0 = default.",
    )
    cpu_threads: int = Field(
        0,
        ge=0,
        description="Threads an engine computes with on the CPU; 0 = one per usable core.",
    )
    backend: Backend = Field(
        "auto",
        description=(
            "How realesrgan-x4plus runs its network: eager PyTorch, or compiled by "
            "torch.compile's inductor; auto = inductor on the CPU where it can compile."
        ),
    )

    # Quality metrics.
    brisque_model_dir: Path = Field(
        Path("/usr/share/doc/opencv-doc/examples/quality"),
        description="Folder of brisque_model_live.yml and brisque_range_live.yml (or .yml.gz).",
    )
    metric_weights_dir: Path | None = Field(
        None, description="Folder of weights for learned metrics (LPIPS, DISTS, FID, ...)."
    )

    # Queue (Redis + RQ). No URL: `megasr serve` starts an embedded Redis server.
    redis_url: str | None = Field(None, description="redis://host:port/db; None = embedded.")
    queue_name: str = "megasr"
    result_ttl_s: int = Field(24 * 3600, gt=0, description="How long results are kept.")
    job_timeout_s: int = Field(3600, gt=0, description="Longest a job may run.")
    max_retries: int = Field(2, ge=0, description="Retries of a failed or abandoned job.")
    expired_record_ttl_s: int = Field(
        7 * 24 * 3600, gt=0, description="How long a removed job still reads 'expired'."
    )

    # Object storage.
    storage_backend: Literal["local", "s3"] = "local"
    s3_bucket: str = "megasr"
    s3_key_prefix: str = Field(
        "", description="Folder of the bucket the service keeps its objects under."
    )
    s3_endpoint_url: str | None = Field(None, description="None = AWS.")
    s3_public_endpoint_url: str | None = Field(
        None, description="Endpoint clients reach; presigned URLs are signed for it."
    )
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    presigned_url_ttl_s: int = Field(3600, gt=0)

    # Gateway: auth, limits, CORS.
    auth_enabled: bool = True
    api_keys: dict[str, str] = Field(
        default_factory=dict, repr=False, description="API key -> tenant."
    )
    api_keys_file: Path | None = Field(None, description="A JSON object of API key -> tenant.")
    rate_limit_per_minute: int = Field(600, ge=0, description="Requests per tenant; 0 = off.")
    max_jobs_in_flight: int = Field(32, ge=0, description="Per tenant; 0 = off.")
    max_queue_depth: int = Field(1000, ge=0, description="Queued jobs in all; 0 = off.")
    busy_retry_after_s: int = Field(5, gt=0, description="Retry-After when in flight or full.")
    cors_origins: list[str] = Field(default_factory=list)
    hsts_max_age_s: int = Field(
        0, ge=0, description="Strict-Transport-Security max-age on HTTPS answers; 0 = none."
    )
    gateway_host: str = "127.0.0.1"
    gateway_port: int = Field(8000, ge=0, le=65535)
    maintenance_interval_s: float = Field(30.0, gt=0, description="Registry cleanup period.")
    submit_fsync_timeout_ms: int = Field(
        2000, ge=0, description="How long a 202 waits for WAITAOF; 0 = does not wait."
    )
    # Uploads, per gateway process: at once, bytes held, and how long one may take.
    max_concurrent_uploads: int = Field(16, gt=0, description="Uploads read at once (503 past).")
    max_upload_bytes_in_flight: int = Field(
        256 * 1024 * 1024, gt=0, description="Bytes of uploads held at once (503 past)."
    )
    upload_timeout_s: float = Field(120.0, gt=0, description="Longest an upload body takes (408).")
    upload_idle_timeout_s: float = Field(
        20.0, gt=0, description="Longest pause within an upload body (408)."
    )

    # Worker: webhooks (the gateway sends some too), metrics port, batching, heartbeats.
    webhook_secret: SecretStr | None = None
    worker_host: str = "127.0.0.1"
    worker_metrics_port: int = Field(9100, ge=0, le=65535)
    max_wait_ms: int = Field(50, ge=0, description="How long a batch waits for more jobs.")
    max_batch_tiles: int = Field(8, gt=0, description="Tiles per engine call at most.")
    heartbeat_interval_s: float = Field(5.0, gt=0)
    heartbeat_ttl_s: int = Field(30, gt=0, description="A started job's lease per heartbeat.")
    worker_ttl_s: int = Field(60, gt=0, description="A silent worker counts as dead after it.")
    worker_maintenance_interval_s: int = Field(30, gt=0)
    watchdog_timeout_s: float = Field(
        900.0,
        gt=0,
        description="An engine call with no progress this long fails its job and the worker.",
    )
    storage_retry_s: float = Field(
        60.0, ge=0, description="How long a worker retries storage it cannot reach."
    )
    worker_exit_linger_s: float = Field(
        0.0,
        ge=0,
        description="How long a stopping worker answers 503 on its probes before it exits.",
    )
    test_stop_at: Literal["engine-returned", "result-stored", "claimed", "ended"] | None = Field(
        None,
        description="Tests only: the point of a job's end where a worker stops itself (SIGSTOP).",
    )
    worker_engines: list[str] = Field(
        default_factory=lambda: ["auto"],
        description="Engines a worker loads at start: registry names or module:Class paths.",
    )
    webhook_attempts: int = Field(10, ge=1, description="Deliveries tried per webhook.")
    webhook_backoff_s: float = Field(2.0, ge=0, description="First retry delay; doubles.")
    webhook_max_backoff_s: float = Field(600.0, ge=0, description="Longest retry delay.")
    webhook_timeout_s: float = Field(10.0, gt=0, description="Per connect and per read.")
    webhook_secrets: dict[str, SecretStr] = Field(
        default_factory=dict, repr=False, description="Tenant -> webhook signing secret."
    )
    webhook_allowed_networks: list[str] = Field(
        default_factory=list,
        description="CIDRs of private webhook receivers let through the address check.",
    )

    @field_validator("webhook_allowed_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for network in value:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError as exc:
                raise ValueError(f"not an IP network: {network!r}") from exc
        return value

    @model_validator(mode="after")
    def _lease_outlives_heartbeats(self) -> Settings:
        """A job's end is claimed only with a heartbeat's margin left on its lease, so a lease
        shorter than two heartbeats would lapse between them and no job could ever end."""
        if 2 * self.heartbeat_interval_s > self.heartbeat_ttl_s:
            raise ValueError(
                f"heartbeat_ttl_s ({self.heartbeat_ttl_s}) must be at least twice "
                f"heartbeat_interval_s ({self.heartbeat_interval_s:g})"
            )
        return self

    def webhook_secret_for(self, tenant: str) -> str | None:
        """The secret that signs ``tenant``'s webhooks: its own, else the shared one."""
        secret = self.webhook_secrets.get(tenant) or self.webhook_secret
        return secret.get_secret_value() if secret else None

    def api_key_tenants(self) -> dict[str, str]:
        """Every API key -> tenant, from ``api_keys`` and the keys file together."""
        keys = dict(self.api_keys)
        if self.api_keys_file is not None:
            try:
                loaded = json.loads(self.api_keys_file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise InvalidParameterError(
                    f"cannot read API keys from {self.api_keys_file}: {exc}"
                ) from exc
            if not isinstance(loaded, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in loaded.items()
            ):
                raise InvalidParameterError(
                    f"{self.api_keys_file} must hold a JSON object of API key -> tenant"
                )
            keys.update(loaded)
        return keys

    @classmethod
    def with_overrides(cls, **overrides: object) -> Settings:
        """Settings as configured, with every override that is not None on top (CLI flags)."""
        return cls(**{key: value for key, value in overrides.items() if value is not None})

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        settings_file = os.environ.get("MEGASR_SETTINGS_FILE")
        if settings_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(settings_file)))
        return tuple(sources)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
