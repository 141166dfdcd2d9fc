"""Where a webhook may go: a public address, resolved once and pinned for the connection.

A ``webhook_url`` is chosen by the client, and the service POSTs to it from inside the
cluster; left unchecked that is a server-side request forgery (the cloud metadata service,
Redis, the cluster's private services). So every address the host resolves to must be
globally routable: loopback, private (RFC 1918, unique-local IPv6), link-local, CGNAT shared
space, multicast, unspecified, reserved and documentation ranges are refused, and so is an
IPv6 address that embeds a refused IPv4 one (IPv4-mapped, 6to4, NAT64). Networks in
``webhook_allowed_networks`` are let through for private receivers, except the cloud metadata
addresses, which are never.

The check and the connection use the same resolution: :meth:`TargetPolicy.resolve` returns
the checked address and the sender connects to it (keeping the host name for ``Host`` and
TLS), so a DNS answer that changes between the check and the connect (DNS rebinding) cannot
move the request. The gateway checks at submit time (a fast 422); the sender checks again at
every attempt, since DNS may have changed in between.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from megasr.errors import InvalidParameterError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]

# Never let through, whatever the allow-list says: instance metadata (AWS, GCP, Azure, OCI,
# DigitalOcean share 169.254.169.254; AWS's IPv6 one; Alibaba's; ECS task metadata).
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "169.254.170.2")
)
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_DEFAULT_PORTS = {"http": 80, "https": 443}


class RefusedTargetError(InvalidParameterError):
    """A webhook URL the service will not POST to (its address, scheme or form)."""


class UnresolvedTargetError(InvalidParameterError):
    """A webhook host that does not resolve (now; DNS may answer later)."""


@dataclass(frozen=True)
class Target:
    """A checked webhook destination: connect to ``address``, speak to ``host``."""

    scheme: str
    host: str
    port: int
    path: str  # path and query, as sent in the request line
    address: str


def origin_of(url: str) -> str:
    """Scheme, host and port of ``url``: what logs may show (a path or query can hold a token,
    and so can credentials)."""
    try:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.hostname}:{parts.port or _DEFAULT_PORTS[parts.scheme]}"
    except (ValueError, KeyError):
        return "(an invalid URL)"


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, in the resolver's order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class TargetPolicy:
    """Checks webhook URLs; ``allowed`` networks are let through (metadata addresses never)."""

    def __init__(self, allowed: Iterable[str] = (), resolver: Resolver = system_resolver) -> None:
        self.allowed: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(network, strict=False) for network in allowed
        )
        self.resolver = resolver

    def resolve(self, url: str) -> Target:
        """The checked target of ``url``; raises RefusedTargetError or UnresolvedTargetError."""
        scheme, host, port, path = _split(url)
        try:
            addresses = self.resolver(host, port)
        except (OSError, UnicodeError) as exc:
            raise UnresolvedTargetError(f"webhook host {host} does not resolve") from exc
        if not addresses:
            raise UnresolvedTargetError(f"webhook host {host} does not resolve")
        for address in addresses:
            reason = self.refusal(ipaddress.ip_address(address.split("%", 1)[0]))
            if reason is not None:
                shown = host if host == address else f"{host} ({address})"
                raise RefusedTargetError(f"webhook_url: {shown} is refused ({reason} address)")
        return Target(scheme, host, port, path, addresses[0])

    def refusal(self, address: IPAddress) -> str | None:
        """Why ``address`` is refused, or None when a webhook may go there."""
        address = _embedded_ipv4(address) or address
        if address in METADATA_ADDRESSES:
            return "cloud metadata"
        if any(address in network for network in self.allowed):
            return None
        return address_class(address)


def address_class(address: IPAddress) -> str | None:
    """The refused class ``address`` belongs to, or None for a globally routable one."""
    checks: list[tuple[bool, str]] = [
        (address.is_unspecified, "unspecified"),
        (address.is_loopback, "loopback"),
        (address.is_link_local, "link-local"),
        (address.is_multicast, "multicast"),
        (address.version == 4 and address in _CGNAT, "shared (CGNAT)"),
        (address.is_private, "private"),
        (address.is_reserved, "reserved"),
        (not address.is_global, "non-global"),
    ]
    return next((name for hit, name in checks if hit), None)


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, 6to4, NAT64), if any."""
    if address.version == 4:
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if any(address in network for network in _NAT64):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _split(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path) of an http(s) URL without credentials."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise RefusedTargetError(f"webhook_url is not a valid URL: {exc}") from exc
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise RefusedTargetError("webhook_url must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise RefusedTargetError(
            "webhook_url must not carry credentials; check the signature instead"
        )
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.scheme, parts.hostname, port or _DEFAULT_PORTS[parts.scheme], path
