"""Which network addresses a job's document may be fetched from.

A document URL is the integrator's, but the fetch runs inside the operator's network: left
alone, a URL can name the service's own loopback, the pod or office network, or the cloud's
metadata endpoint (credentials for the taking), and the service fetches it for them (SSRF).
So the rule is decided on addresses, never on how a URL spells its host: the fetcher resolves
the host when it connects and asks about every address it got (`0x7f000001`, `2130706433`
and `127.1` are all 127.0.0.1 by then). An address that only wraps an IPv4 address (IPv4-
mapped, NAT64, 6to4) is judged as the address it reaches.

The operator's allow-list (`DOCUMENT_ALLOW_HOSTS`) names host names and networks that may be
fetched although they are not public: an intranet document server. The cloud metadata
addresses are refused whatever the list says: no document lives there.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Final

__all__ = [
    "METADATA_ADDRESSES",
    "AddressPolicy",
    "IPAddress",
    "IPNetwork",
    "Verdict",
    "destination",
]

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

METADATA_ADDRESSES: Final[frozenset[IPAddress]] = frozenset(
    ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, …
        "169.254.170.2",  # AWS ECS task credentials
        "100.100.100.200",  # Alibaba Cloud
        "fd00:ec2::254",  # AWS over IPv6
    )
)
"""Instance metadata endpoints: never fetched, even from an allowed network."""

# Named before the catch-all (`is_global`) so that a refusal says what the address is, and
# listed outright because `ipaddress` has changed its mind on some of them between Python
# releases (and still calls 64:ff9b::/96 and ::/96 global on some).
_REFUSED: Final[tuple[tuple[IPNetwork, str], ...]] = tuple(
    (ip_network(network), reason)
    for network, reason in (
        ("0.0.0.0/8", "unspecified"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "shared address space"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "reserved (IETF protocol assignments)"),
        ("192.0.2.0/24", "reserved (documentation)"),
        ("192.88.99.0/24", "reserved (6to4 relay)"),
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "reserved (benchmarking)"),
        ("198.51.100.0/24", "reserved (documentation)"),
        ("203.0.113.0/24", "reserved (documentation)"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("::/96", "reserved (IPv4-compatible)"),
        ("64:ff9b:1::/48", "reserved (local NAT64)"),
        ("100::/64", "reserved (discard)"),
        ("2001::/23", "reserved (IETF protocol assignments)"),
        ("2001:db8::/32", "reserved (documentation)"),
        ("fc00::/7", "private (unique local)"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "link-local (site-local)"),
        ("ff00::/8", "multicast"),
    )
)

_NAT64: Final = ip_network("64:ff9b::/96")
_LABEL: Final = r"(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)"
_HOST_NAME: Final = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
# A "name" whose last label is a number is an address in another spelling: refused as an
# allow-list entry, so that only networks (in CIDR form) allow addresses.
_NUMERIC_LABEL: Final = re.compile(r"[0-9]+|0x[0-9a-f]*")


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether an address may be connected to, and why (for the log)."""

    allowed: bool
    reason: str


def destination(address: IPAddress) -> IPAddress:
    """The address a connection to `address` reaches: the IPv4 address inside an IPv4-mapped,
    NAT64 (64:ff9b::/96) or 6to4 (2002::/16) address, else `address` (without a zone)."""
    if isinstance(address, IPv4Address):
        return address
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    plain = IPv6Address(int(address))  # drops a zone (%eth0), which equality would compare
    if plain in _NAT64:
        return IPv4Address(int(plain) & 0xFFFFFFFF)
    return plain


def _refusal(address: IPAddress) -> str | None:
    for network, reason in _REFUSED:
        if address.version == network.version and address in network:
            return reason
    if not address.is_global:
        return "not globally reachable"
    return None


def _host_key(host: str) -> str:
    return host.strip().lower().rstrip(".")


class AddressPolicy:
    """Decides each address a document fetch would connect to; see the module docstring.

    `allow_hosts`: host names fetched whatever they resolve to (bar the metadata addresses),
    each exact or `*.domain` for the names under it; `allow_networks`: networks fetched
    although they are not public. Build it from `DOCUMENT_ALLOW_HOSTS` with `from_entries`.
    """

    def __init__(
        self,
        *,
        allow_hosts: Iterable[str] = (),
        allow_networks: Iterable[IPNetwork] = (),
    ) -> None:
        names = {_host_key(h) for h in allow_hosts}
        self._exact = frozenset(n for n in names if not n.startswith("*."))
        self._suffixes = tuple(sorted(n[1:] for n in names if n.startswith("*.")))
        self._networks = tuple(allow_networks)

    @classmethod
    def from_entries(cls, entries: Iterable[str]) -> AddressPolicy:
        """A policy from allow-list entries: a network (`10.1.0.0/16`, `192.0.2.7`,
        `fd12::/64`, `[::1]`) or a host name (`docs.example.com`, `*.corp.example`).
        Raises ValueError naming the first entry that is neither."""
        hosts: list[str] = []
        networks: list[IPNetwork] = []
        for raw in entries:
            entry = raw.strip()
            if not entry:
                continue
            network = _network(entry)
            if network is not None:
                networks.append(network)
                continue
            name = _host_key(entry)
            bare = name.removeprefix("*.")
            if not _HOST_NAME.fullmatch(bare) or len(bare) > 253:
                raise ValueError(
                    f"{raw!r} is neither a network (CIDR) nor a host name"
                    " (names are ASCII: write an international one in its xn-- form)"
                )
            if _NUMERIC_LABEL.fullmatch(bare.rsplit(".", 1)[-1]):
                raise ValueError(f"{raw!r} looks like an address: write it in CIDR form")
            hosts.append(name)
        return cls(allow_hosts=hosts, allow_networks=networks)

    def allows_host(self, host: str) -> bool:
        """Whether the host name `host` (as the URL has it) is on the allow-list."""
        key = _host_key(host)
        return key in self._exact or key.endswith(self._suffixes)

    def check(self, address: IPAddress, *, host: str | None = None) -> Verdict:
        """Whether a fetch may connect to `address`, which `host` (the URL's host, if it
        named one) resolved to."""
        target = destination(address)
        shown = "" if target == address else f" (reached through {address})"
        if target in METADATA_ADDRESSES:
            return Verdict(allowed=False, reason=f"cloud metadata address{shown}")
        if host is not None and self.allows_host(host):
            return Verdict(allowed=True, reason="allow-listed host")
        for network in self._networks:
            if any(a.version == network.version and a in network for a in (address, target)):
                return Verdict(allowed=True, reason=f"allow-listed network {network}")
        refusal = _refusal(target)
        if refusal is not None:
            return Verdict(allowed=False, reason=f"{refusal}{shown}")
        return Verdict(allowed=True, reason="public")


def _network(entry: str) -> IPNetwork | None:
    """`entry` as a network, or None if it is not written as one. A bare address is its own
    network (/32, /128); host bits set are refused (`10.1.2.3/8` is a typo, not 10/8)."""
    text = entry.removeprefix("[").removesuffix("]") if entry.startswith("[") else entry
    try:
        return ip_network(text, strict=True)
    except ValueError:
        pass
    try:
        loose = ip_network(text, strict=False)
    except ValueError:
        return None
    raise ValueError(f"{entry!r} has host bits set: did you mean {loose}?")
