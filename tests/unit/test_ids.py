"""Event ids: random version 4 UUIDs, unique, and different in a forked child."""

from __future__ import annotations

import os
import uuid

from service.core.clock import new_id


def test_ids_are_random_version_4_uuids_and_do_not_repeat() -> None:
    ids = [new_id() for _ in range(20_000)]
    assert all(i.version == 4 and i.variant == uuid.RFC_4122 for i in ids)
    assert len(set(ids)) == len(ids)


def test_a_forked_child_draws_other_ids_than_its_parent() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        os.close(read)
        os.write(write, b"".join(new_id().bytes for _ in range(4)))
        os._exit(0)
    os.close(write)
    child = os.read(read, 64)
    os.close(read)
    os.waitpid(pid, 0)
    parent = b"".join(new_id().bytes for _ in range(4))
    assert len(child) == 64
    assert child != parent
