"""The AMQP connection's socket, written once per burst of frames.

aiormq's writer task writes each frame as it takes it from its queue, and asyncio's socket
transport sends each write at once, so every publish costs a `send` system call (on
loopback the kernel delivers to RabbitMQ within that call): the largest single cost of a
publish in a profile. Here the frames the writer writes in one step are joined and sent
together as soon as the last one is written: once the connection is open, the transport
is told how many frames the writer still has queued (`follows`), and the write that leaves
none sends the burst. A write with frames still queued (the writer stopped to drain) or
with no count yet (the handshake) leaves at the end of the loop iteration. Nothing waits
longer than that iteration, the order is kept, and flow control is asyncio's own (the
joined data goes through the real transport's buffer, whose high-water mark pauses
`drain`). Sending at the iteration's end alone cost each publish the rest of its
iteration and the next one's work.

It plugs in through aiormq's `TransportFactory` (public, `Connection(transport_factory=)`)
and an aio-pika connection class that hands the factory down and, on every connection,
the count.

Joining only pays if an iteration has several publishes to write. aiormq queues each
publish for its writer task in a queue of 10 (`Connection.FRAME_BUFFER_SIZE`): past that,
a publish waits for the writer while holding the channel's lock, and every later one is
handed the lock one loop iteration at a time, so a flood goes out one publish per
iteration. The connection class raises that bound above what the relay can have in flight
(`MAX_PUBLISH_CONCURRENCY`), and the publisher does not wait for its frame's drain, only
for the broker's confirm: the publishes an iteration starts leave in one `send`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any, Final

import aio_pika
import aiormq
from yarl import URL

from service.config import MAX_PUBLISH_CONCURRENCY

__all__ = ["CoalescingConnection", "CoalescingTransport", "CoalescingTransportFactory"]

# Publishes aiormq's write queue holds: every one the relay may have in flight, and the
# channels' own frames (the relay's in-flight bound is what bounds memory, not this).
WRITE_QUEUE_FRAMES: Final = MAX_PUBLISH_CONCURRENCY + 256
# asyncio.open_connection's default read limit.
_READ_LIMIT = 2**16


class CoalescingTransport(asyncio.Transport):
    """A transport whose writes within one loop iteration leave as one."""

    def __init__(self, inner: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._inner = inner
        self._loop = loop
        self._pending: list[bytes] = []
        self._scheduled = False
        # How many frames are still to be written after this one (aiormq's write queue).
        self.follows: Callable[[], int] | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._pending.append(bytes(data))
        if self.follows is not None and self.follows() == 0:
            self.flush()  # the last frame queued: the burst is complete
        elif not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush_scheduled)

    def writelines(self, list_of_data: Any) -> None:  # noqa: ANN401 - asyncio's signature
        for data in list_of_data:
            self.write(data)

    def _flush_scheduled(self) -> None:
        self._scheduled = False
        self.flush()

    def flush(self) -> None:
        """Send what is pending (a closing transport drops it, as asyncio's does)."""
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            self._inner.write(data)

    def get_write_buffer_size(self) -> int:
        return self._inner.get_write_buffer_size() + sum(map(len, self._pending))

    def write_eof(self) -> None:
        self.flush()
        self._inner.write_eof()

    def can_write_eof(self) -> bool:
        return self._inner.can_write_eof()

    def close(self) -> None:
        self.flush()
        self._inner.close()

    def abort(self) -> None:
        self._pending.clear()
        self._inner.abort()

    def is_closing(self) -> bool:
        return self._inner.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:  # noqa: ANN401
        return self._inner.get_extra_info(name, default)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._inner.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._inner.get_write_buffer_limits()

    def pause_reading(self) -> None:
        self._inner.pause_reading()

    def resume_reading(self) -> None:
        self._inner.resume_reading()

    def is_reading(self) -> bool:
        return self._inner.is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._inner.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._inner.get_protocol()


class CoalescingTransportFactory(aiormq.TransportFactory):
    """Opens the connection as `asyncio.open_connection` does (TLS for `amqps`), with the
    writer on a `CoalescingTransport`."""

    def __init__(self) -> None:
        self.transport: CoalescingTransport | None = None  # the latest one made

    async def create(
        self,
        url: URL,
        **kwargs: Any,  # noqa: ANN401 - aiormq's signature
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        provider = kwargs.pop("ssl_context_provider", None)
        context: ssl.SSLContext | None = None
        if url.scheme == "amqps" and provider is not None:
            context = await provider.get_context()
        if url.port is None:  # aiormq sets the scheme's default port
            raise aiormq.exceptions.AMQPConnectionError(f"no port in {url.with_password(None)}")
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=_READ_LIMIT, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        try:
            transport, _ = await loop.create_connection(
                lambda: protocol, host=url.host or "localhost", port=url.port, ssl=context, **kwargs
            )
        except OSError as exc:
            raise aiormq.exceptions.AMQPConnectionError(*exc.args) from exc
        self.transport = CoalescingTransport(transport, loop)
        writer = asyncio.StreamWriter(self.transport, protocol, reader, loop)
        return reader, writer


class CoalescingConnection(aio_pika.RobustConnection):
    """aio-pika's robust connection, with aiormq told to open its socket through
    `CoalescingTransportFactory` (aio-pika passes its parsed parameters on to aiormq)."""

    def __init__(self, url: URL, **kwargs: Any) -> None:  # noqa: ANN401
        super().__init__(url, **kwargs)
        self._factory = CoalescingTransportFactory()
        self.kwargs["transport_factory"] = self._factory
        # aiormq reads the write queue's size from its class when it makes a connection
        # (and has no per-connection setting): raised for every connection of the process.
        aiormq.Connection.FRAME_BUFFER_SIZE = max(
            aiormq.Connection.FRAME_BUFFER_SIZE, WRITE_QUEUE_FRAMES
        )

    async def _on_connected(self) -> None:
        # On every (re)connection, before its channels are restored: the socket just opened
        # learns what aiormq's writer still has queued.
        transport, underlay = self._factory.transport, self.transport
        if transport is not None and underlay is not None:
            transport.follows = underlay.connection.write_queue.qsize
        await super()._on_connected()
