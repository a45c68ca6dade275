"""The intake of one MQTT connection, with no broker: a queue stands for the connection.

Each test runs `Intake.run` as the ingress does and checks what reached the handler, what
was acknowledged (and in which order), and how the intake ended. Waits are on events the
fakes set; nothing waits for time to pass.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from structlog.testing import capture_logs

from service.adapters.mqtt.intake import Delivery, Intake
from service.adapters.mqtt.wills import LastWills, will_payload
from service.core.codec import Inbound

# --- fakes -------------------------------------------------------------------------------------


class Counted:
    """A list a test can wait on until it holds `n` items."""

    def __init__(self) -> None:
        self.items: list[object] = []
        self._waiting: list[tuple[int, asyncio.Event]] = []

    def add(self, item: object) -> None:
        self.items.append(item)
        for n, reached in self._waiting:
            if len(self.items) >= n:
                reached.set()

    async def reach(self, n: int) -> None:
        if len(self.items) < n:
            reached = asyncio.Event()
            self._waiting.append((n, reached))
            await reached.wait()


class LostConnectionError(Exception):
    pass


class FakeSource:
    """Deliveries a test puts; `lose` ends the connection at the next `receive`."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Delivery | BaseException] = asyncio.Queue()
        self.batches_taken = Counted()  # one item per batch the intake took
        self.lost = asyncio.Event()  # the intake saw the connection end

    def put(self, *deliveries: Delivery) -> None:
        for delivery in deliveries:
            self._queue.put_nowait(delivery)

    def lose(self) -> None:
        self._queue.put_nowait(LostConnectionError("connection lost"))

    async def receive(self) -> Delivery:
        item = await self._queue.get()
        if isinstance(item, BaseException):
            self.lost.set()
            raise item
        return item

    def arrived(self) -> int:
        return self._queue.qsize()

    def taken(self) -> None:
        self.batches_taken.add(None)


class FakeAcks:
    def __init__(self) -> None:
        self.mids = Counted()

    def ack(self, delivery: Delivery) -> None:
        self.mids.add(delivery.mid)


class FakeHandler:
    """Records each batch; its commit resolves at once, or when the test says (`manual`)."""

    def __init__(self, *, manual: bool = False) -> None:
        self.manual = manual
        self.batches = Counted()
        self.commits: list[asyncio.Future[None]] = []
        self.gate: asyncio.Event | None = None  # when set up, applying waits for it

    async def __call__(self, commands: Sequence[Inbound]) -> asyncio.Future[None]:
        self.batches.add([int(c.payload) for c in commands])
        if self.gate is not None:
            await self.gate.wait()
        committed = asyncio.get_running_loop().create_future()
        if not self.manual:
            committed.set_result(None)
        self.commits.append(committed)
        return committed


def command(mid: int) -> Delivery:
    inbound = Inbound(topic="commands/q1", payload=str(mid).encode())
    return Delivery(inbound=inbound, last_will=False, mid=mid, qos=1)


def will(mid: int, payload: bytes) -> Delivery:
    inbound = Inbound(topic="/last-wills", payload=payload)
    return Delivery(inbound=inbound, last_will=True, mid=mid, qos=1)


class Rig:
    def __init__(self, *, batch_size: int = 256, batches_committing: int = 4, manual=False):
        self.source = FakeSource()
        self.acks = FakeAcks()
        self.handler = FakeHandler(manual=manual)
        self.wills: list[bytes] = []
        self.intake = Intake(
            source=self.source,
            acknowledger=self.acks,
            handle=self.handler,
            on_will=self.wills.append,
            batch_size=batch_size,
            batches_committing=batches_committing,
        )
        self.stop = asyncio.Event()

    def start(self) -> asyncio.Task[None]:
        return asyncio.create_task(self.intake.run(self.stop))


# --- batching ----------------------------------------------------------------------------------


async def test_what_has_arrived_is_handled_as_one_batch():
    rig = Rig()
    rig.source.put(command(1), command(2), command(3))
    task = rig.start()
    await rig.acks.mids.reach(3)
    rig.stop.set()
    await task
    assert rig.handler.batches.items == [[1, 2, 3]]
    assert rig.acks.mids.items == [1, 2, 3]
    assert rig.intake.received == 3
    assert rig.intake.acknowledged == 3


async def test_a_batch_holds_at_most_batch_size_deliveries():
    rig = Rig(batch_size=2)
    rig.source.put(*(command(mid) for mid in range(1, 6)))
    task = rig.start()
    await rig.acks.mids.reach(5)
    rig.stop.set()
    await task
    assert rig.handler.batches.items == [[1, 2], [3, 4], [5]]
    assert rig.acks.mids.items == [1, 2, 3, 4, 5]


# --- last wills --------------------------------------------------------------------------------


async def test_last_wills_go_to_their_callback_not_the_handler_and_are_acknowledged():
    rig = Rig()
    rig.source.put(command(1), will(2, b"peer"), command(3))
    task = rig.start()
    await rig.acks.mids.reach(3)
    rig.stop.set()
    await task
    assert rig.wills == [b"peer"]
    assert rig.handler.batches.items == [[1, 3]]
    assert rig.acks.mids.items == [1, 2, 3]


async def test_a_batch_of_wills_alone_is_acknowledged_without_the_handler():
    rig = Rig()
    rig.source.put(will(1, b"a"), will(2, b"b"))
    task = rig.start()
    await rig.acks.mids.reach(2)
    rig.stop.set()
    await task
    assert rig.wills == [b"a", b"b"]
    assert rig.handler.batches.items == []


def test_a_peers_will_names_the_peer():
    peers: list[str] = []
    seen: list[None] = []
    wills = LastWills(own_id="me", on_peer_will=peers.append, on_will=lambda: seen.append(None))
    with capture_logs() as logs:
        wills(will_payload("other"))
    assert peers == ["other"]
    assert len(seen) == 1
    assert [entry["event"] for entry in logs] == ["peer_last_will"]


def test_our_own_will_is_no_peer_and_an_unreadable_one_is_only_counted():
    peers: list[str] = []
    seen: list[None] = []
    wills = LastWills(own_id="me", on_peer_will=peers.append, on_will=lambda: seen.append(None))
    with capture_logs() as logs:
        wills(will_payload("me"))
        wills(b"{not json")
        wills(b'{"instance": "x"}')  # readable JSON, but not a will
    assert peers == []
    assert len(seen) == 3
    assert [entry["event"] for entry in logs] == [
        "own_last_will_seen",
        "last_will_unreadable",
        "last_will_unreadable",
    ]


# --- acknowledgements --------------------------------------------------------------------------


async def test_acks_go_out_in_receive_order_even_when_later_commits_resolve_first():
    rig = Rig(batch_size=1, manual=True)
    rig.source.put(command(1), command(2), command(3))
    task = rig.start()
    await rig.handler.batches.reach(3)
    rig.handler.commits[2].set_result(None)
    rig.handler.commits[1].set_result(None)
    rig.handler.commits[0].set_result(None)
    await rig.acks.mids.reach(3)
    assert rig.acks.mids.items == [1, 2, 3]
    rig.stop.set()
    await task


async def test_a_failed_commit_stops_all_acks_and_ends_the_intake_with_its_error():
    rig = Rig(batch_size=1, manual=True)
    rig.source.put(command(1), command(2), command(3))
    task = rig.start()
    await rig.handler.batches.reach(3)
    rig.handler.commits[2].set_result(None)
    rig.handler.commits[1].set_exception(OSError("disk full"))
    rig.handler.commits[0].set_result(None)
    with pytest.raises(OSError, match="disk full"):
        await task
    assert rig.acks.mids.items == [1]
    assert rig.intake.acknowledged == 1


async def test_nothing_more_is_applied_after_a_failed_commit():
    rig = Rig(batch_size=1, batches_committing=1, manual=True)
    rig.source.put(command(1), command(2))
    task = rig.start()
    await rig.source.batches_taken.reach(2)  # the second batch waits for the first one's slot
    rig.handler.commits[0].set_exception(OSError("disk full"))
    with pytest.raises(OSError, match="disk full"):
        await task
    assert rig.handler.batches.items == [[1]]
    assert rig.acks.mids.items == []


async def test_at_most_batches_committing_batches_wait_for_their_commit():
    rig = Rig(batch_size=1, batches_committing=2, manual=True)
    rig.source.put(command(1), command(2), command(3))
    task = rig.start()
    # Taking a batch and applying it are one step when a slot is free: the third is taken,
    # and not applied, because two batches are committing.
    await rig.source.batches_taken.reach(3)
    assert rig.handler.batches.items == [[1], [2]]
    rig.handler.commits[0].set_result(None)
    await rig.handler.batches.reach(3)  # the first one's slot went to the third
    assert rig.acks.mids.items == [1]
    rig.handler.commits[1].set_result(None)
    rig.handler.commits[2].set_result(None)
    await rig.acks.mids.reach(3)
    rig.stop.set()
    await task
    assert rig.acks.mids.items == [1, 2, 3]


# --- stopping and connection loss --------------------------------------------------------------


async def test_a_stop_while_a_command_is_applied_finishes_and_acknowledges_it_first():
    rig = Rig()
    rig.handler.gate = asyncio.Event()
    rig.source.put(command(1))
    task = rig.start()
    await rig.handler.batches.reach(1)  # applying, held at the gate
    rig.stop.set()
    rig.source.put(command(2))  # arrives after the stop: left to the broker
    rig.handler.gate.set()
    await task
    assert rig.handler.batches.items == [[1]]
    assert rig.acks.mids.items == [1]


async def test_a_stop_while_waiting_for_a_delivery_ends_at_once():
    rig = Rig()
    task = rig.start()
    rig.stop.set()
    await task
    assert rig.handler.batches.items == []
    assert rig.intake.received == 0


async def test_a_lost_connection_still_acknowledges_what_commits_then_ends_with_its_error():
    rig = Rig(manual=True)
    rig.source.put(command(1))
    task = rig.start()
    await rig.handler.batches.reach(1)
    rig.source.lose()
    await rig.source.lost.wait()  # the consumer has ended; the batch is still committing
    rig.handler.commits[0].set_result(None)
    with pytest.raises(LostConnectionError):
        await task
    assert rig.acks.mids.items == [1]


def test_batch_size_and_slots_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        Intake(
            source=FakeSource(),
            acknowledger=FakeAcks(),
            handle=FakeHandler(),
            on_will=lambda _: None,
            batch_size=0,
        )
