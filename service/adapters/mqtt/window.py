"""Flow control of received MQTT messages, kept by the client when the broker does not.

MQTT 5's Receive Maximum asks the broker to have at most N messages unacknowledged at the
client. Mosquitto 2.0.11 stops honouring it once acknowledgements flow (`python -m
bench.receive_maximum` shows it), so in a flood the client's queue grew to tens of thousands
of commands, each about 7 KB in memory (paho's MQTT 5 `Properties`). This window reads the
socket only while the client holds fewer than `limit` messages not yet taken; above that it
stops, and TCP backpressure keeps the rest in the broker's queue, which is made for them.

It replaces aiomqtt's socket reader with one that can pause: aiomqtt has no such hook. The
reader does what aiomqtt's does (read until the socket has nothing pending, and report a
read failure as the connection's end), and then checks the window. Only the connection
(client.py) makes one: it hands over paho's client, and what paho's API cannot tell (how
many messages are held, how to end the connection).

The window holds only once `arm` is called, when the consumer is taking messages: a paused
reader reads no answers either, and a persistent session's queued commands arrive before
the answer to our SUBSCRIBE, which would then never be read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from paho.mqtt import client as paho_client

__all__ = ["ReceiveWindow"]


class ReceiveWindow:
    """Reads `paho`'s socket while fewer than `limit` received messages are `held`.

    `held` counts what the client received and the consumer has not taken yet; `broken`
    ends the connection with the error a read raised (the owner knows how).
    """

    def __init__(
        self,
        paho: paho_client.Client,
        *,
        held: Callable[[], int],
        broken: Callable[[Exception], None],
        limit: int,
        on_pause: Callable[[], None] = lambda: None,
    ) -> None:
        self._paho = paho
        self._held = held
        self._broken = broken
        self._limit = limit
        self._resume_below = max(1, limit // 2)
        self._loop = asyncio.get_running_loop()
        self._fd: int | None = None
        self._paused = False
        self._armed = False
        self._on_pause = on_pause
        aiomqtt_opened = self._paho.on_socket_open

        def on_socket_open(paho: paho_client.Client, userdata: Any, sock: Any) -> None:  # noqa: ANN401
            if aiomqtt_opened is not None:
                aiomqtt_opened(paho, userdata, sock)
            # Called from the thread that connects; aiomqtt schedules its reader the same
            # way, so ours, scheduled after it, replaces it.
            self._loop.call_soon_threadsafe(self._take_over, sock.fileno())

        self._paho.on_socket_open = on_socket_open

    @property
    def paused(self) -> bool:
        return self._paused

    def arm(self) -> None:
        """The consumer is taking messages now: hold the window from here on."""
        self._armed = True

    def taken(self) -> None:
        """The consumer took messages: read again once the client holds few enough."""
        if self._paused and self._held() < self._resume_below:
            sock = self._paho.socket()
            if sock is None or sock.fileno() != self._fd:
                return  # the connection is gone; the next one has a window of its own
            self._paused = False
            self._loop.add_reader(self._fd, self._read)

    def _take_over(self, fd: int) -> None:
        self._fd = fd
        self._loop.add_reader(fd, self._read)

    def _read(self) -> None:
        try:
            while True:
                self._paho.loop_read()
                # An SSL socket may hold decoded bytes that select() does not report.
                sock = self._paho.socket()
                pending = getattr(sock, "pending", None)
                if pending is None or pending() <= 0:
                    break
        except Exception as exc:  # noqa: BLE001 - the connection broke: end it, as aiomqtt does
            self._broken(exc)
            return
        if self._armed and self._held() >= self._limit and self._fd is not None:
            self._paused = True
            self._on_pause()
            self._loop.remove_reader(self._fd)
