"""The coalescing transport on a real socket pair: one iteration's writes leave in one
send, in order; closing sends what is pending, aborting drops it."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from service.adapters.amqp_transport import CoalescingTransport


@dataclass
class Pair:
    transport: CoalescingTransport
    inner: asyncio.Transport
    peer: socket.socket
    sends: list[bytes]


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    ours, peer = socket.socketpair()
    loop = asyncio.get_running_loop()
    inner, _ = await loop.create_connection(asyncio.Protocol, sock=ours)
    assert isinstance(inner, asyncio.Transport)
    sends: list[bytes] = []
    real_write = inner.write

    def counted(data: bytes | bytearray | memoryview) -> None:
        sends.append(bytes(data))
        real_write(data)

    inner.write = counted  # type: ignore[method-assign]
    peer.setblocking(False)
    yield Pair(CoalescingTransport(inner, loop), inner, peer, sends)
    inner.abort()
    peer.close()


async def received(peer: socket.socket, size: int) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    while len(data) < size:
        data += await asyncio.wait_for(loop.sock_recv(peer, size - len(data)), 2)
    return data


async def test_one_iterations_writes_leave_as_one_send_in_order(pair: Pair) -> None:
    for chunk in (b"frame-1;", b"frame-2;", bytearray(b"frame-3;")):
        pair.transport.write(chunk)
    assert pair.sends == []  # not before the iteration ends
    assert pair.transport.get_write_buffer_size() == 24
    await asyncio.sleep(0)
    assert pair.sends == [b"frame-1;frame-2;frame-3;"]
    pair.transport.write(b"later")
    await asyncio.sleep(0)
    assert pair.sends[1:] == [b"later"]
    assert await received(pair.peer, 29) == b"frame-1;frame-2;frame-3;later"


async def test_close_sends_what_is_pending_and_abort_drops_it(pair: Pair) -> None:
    pair.transport.write(b"last words")
    pair.transport.close()
    assert pair.sends == [b"last words"]
    assert await received(pair.peer, 10) == b"last words"
    assert pair.transport.is_closing()


async def test_abort_drops_what_is_pending(pair: Pair) -> None:
    pair.transport.write(b"never sent")
    pair.transport.abort()
    await asyncio.sleep(0)
    assert pair.sends == []


async def test_the_last_frame_queued_sends_the_burst_at_once(pair: Pair) -> None:
    # aiormq's writer writes what it has queued in one step: after the write that leaves
    # nothing queued, waiting for the iteration's end would only add latency.
    queued = [2, 1, 0]
    pair.transport.follows = lambda: queued.pop(0)
    for chunk in (b"a;", b"b;", b"c;"):
        pair.transport.write(chunk)
        assert pair.sends == ([b"a;b;c;"] if not queued else [])
    await asyncio.sleep(0)
    assert pair.sends == [b"a;b;c;"]
    assert await received(pair.peer, 6) == b"a;b;c;"


async def test_a_burst_cut_short_still_leaves_at_the_iterations_end(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The writer may stop with frames still queued (it waits for a drain): what it wrote
    # is not held back beyond the iteration.
    pair.transport.follows = lambda: 5
    loop = asyncio.get_running_loop()
    scheduled: list[object] = []
    call_soon = loop.call_soon

    def counted(callback: Any, *args: Any, **kwargs: Any) -> asyncio.Handle:
        scheduled.append(callback)
        return call_soon(callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_soon", counted)
    pair.transport.write(b"first;")
    pair.transport.write(b"second;")
    assert pair.sends == []
    assert len(scheduled) == 1  # one flush for the iteration, not one per write
    await asyncio.sleep(0)
    assert pair.sends == [b"first;second;"]
