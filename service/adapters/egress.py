"""Connections only to addresses the policy allows, checked when the connection is made.

A check of the URL before the request is not enough: the HTTP library would resolve the
name again when it connects, and a name can resolve differently the second time (DNS
rebinding: public for the check, 127.0.0.1 for the connection). So the check sits where the
connection is made: this `httpcore` network backend resolves the host itself, refuses the
connection if ANY address it resolved to is refused (a name that also points inside is not
trusted halfway), and connects to the checked addresses, never to the name. The name stays
the request's: httpcore sends it as SNI and verifies the certificate against it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Iterable

import httpcore

from service.core.addresses import AddressPolicy, IPAddress

__all__ = ["AddressRefused", "CheckedBackend", "resolve"]


class AddressRefused(Exception):  # noqa: N818 - a refusal, not a bug
    """A connection the policy refuses; the message names the host, address and reason."""


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to, in the resolver's order, each once. The system's
    resolver reads the host as any connect would (`0x7f000001`, `2130706433` and `127.1` are
    127.0.0.1), so what is checked is what is connected to."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    found: dict[IPAddress, None] = {}
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            found.setdefault(ipaddress.ip_address(sockaddr[0]), None)
    return list(found)


class CheckedBackend(httpcore.AsyncNetworkBackend):
    """Resolves, checks every address, then connects to one of them (in order)."""

    def __init__(self, *, policy: AddressPolicy, inner: httpcore.AsyncNetworkBackend) -> None:
        self._policy = policy
        self._inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            addresses = await resolve(host, port)
        except (OSError, UnicodeError) as exc:  # socket.gaierror is an OSError
            raise httpcore.ConnectError(f"{host!r} did not resolve: {exc}") from exc
        if not addresses:
            raise httpcore.ConnectError(f"{host!r} resolved to no IP address")
        for address in addresses:
            verdict = self._policy.check(address, host=host)
            if not verdict.allowed:
                raise AddressRefused(f"{host!r} resolves to {address}: {verdict.reason}")
        # Each address in turn (an IPv6 address first may be unreachable from here); the
        # last one's failure is the one reported.
        *others, last = addresses
        for address in others:
            with contextlib.suppress(httpcore.ConnectError, httpcore.ConnectTimeout):
                return await self._connect(address, port, timeout, local_address, socket_options)
        return await self._connect(last, port, timeout, local_address, socket_options)

    async def _connect(
        self,
        address: IPAddress,
        port: int,
        timeout: float | None,  # noqa: ASYNC109 - passed on to httpcore's backend
        local_address: str | None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None,
    ) -> httpcore.AsyncNetworkStream:
        return await self._inner.connect_tcp(
            str(address),  # a literal: the inner backend has nothing to resolve
            port,
            timeout=timeout,
            local_address=local_address,
            socket_options=socket_options,
        )

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        del path, timeout, socket_options  # nothing to connect to: never asked for
        raise AddressRefused("documents are fetched over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)
