"""API keys -> tenants.

Keys are kept only as SHA-256 digests, so a lookup compares digests of fixed length (no
timing hint about how much of a guessed key matched) and a memory dump shows no key.
With auth off every caller is the one tenant ``local``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from megasr.errors import AuthenticationError, InvalidParameterError
from megasr.settings import Settings

LOCAL_TENANT = "local"


@dataclass(frozen=True)
class ApiKeys:
    enabled: bool
    tenants_by_digest: dict[str, str]

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiKeys:
        if not settings.auth_enabled:
            return cls(enabled=False, tenants_by_digest={})
        keys = settings.api_key_tenants()
        if not keys:
            raise InvalidParameterError(
                "auth is on but no API keys are set: set MEGASR_API_KEYS or MEGASR_API_KEYS_FILE"
                " (or MEGASR_AUTH_ENABLED=false for local use)"
            )
        return cls(enabled=True, tenants_by_digest={_digest(k): t for k, t in keys.items()})

    def tenant_for(self, key: str | None) -> str:
        """The tenant of ``key`` (from ``Authorization: Bearer`` or ``X-API-Key``)."""
        if not self.enabled:
            return LOCAL_TENANT
        if not key:
            raise AuthenticationError("send an API key: Authorization: Bearer <key> or X-API-Key")
        tenant = self.tenants_by_digest.get(_digest(key))
        if tenant is None:
            raise AuthenticationError("unknown API key")
        return tenant


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()
