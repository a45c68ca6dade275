#!/usr/bin/env python3
"""Generate the RabbitMQ users of the print service: definitions with password hashes only.

    python3 deploy/rabbitmq/make_users.py [--out DIR] [--tenant NAME ...] [--reader NAME ...]

writes, in DIR (default deploy/rabbitmq/generated/, git-ignored), both readable by the owner
only:

- `users.json`: a definitions file (users, permissions, topic permissions) for RabbitMQ to
  import beside the shipped topology (deploy/rabbitmq/definitions.json; rabbitmq.conf loads
  the directory holding both);
- `credentials.json`: each user's password, for the clients' AMQP URLs.

Passwords already in `credentials.json` are kept, so adding a tenant rotates nobody; delete
the file (or a user from it) to rotate. Nothing here is committed.

Roles (least privilege; AMQP permissions are regular expressions on resource names, topic
permissions on routing keys, both anchored here):

- the service (`print-service`): configures and writes its two exchanges and two queues,
  reads only its exchanges (a binding needs read on its source); it reads no queue.
- a tenant T: declares, binds and consumes only queues named `tenants/T/...`, binding them
  to the events exchanges with routing keys of its own: `events/T.<jobId rest>`,
  `counts/T.<queueId rest>`, `jobs/T.<queueId rest>`, `printer-statuses/T.<queueId rest>`,
  `rejections/T.<queueId rest>` (its jobs' and queues' ids begin with `T.`). Not the
  `printers/<printerId>` events: a printer may serve several tenants' queues, and its id is
  not one of a tenant's; a tenant asks for its queues' printers with `getPrinterStatus`.
  RabbitMQ checks a binding's key against the topic permission, so `#` or another tenant's
  prefix is refused; as every such key begins with the word `events/T` (topic words are
  split on `.`), it can only match T's own routing keys.
- a reader R (optional): consumes the shared queues `events/jobs` and `events/rejections`,
  which receive every tenant's events: for the operator's own consumers only.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import secrets
import sys
from pathlib import Path
from typing import Any, Final

__all__ = [
    "SERVICE_USER",
    "definitions",
    "main",
    "password_hash",
    "reader_grants",
    "service_grants",
    "tenant_grants",
]

SERVICE_USER: Final = "print-service"
VHOST: Final = "/"
EVENTS_EXCHANGE: Final = "print.events"
REJECTIONS_EXCHANGE: Final = "print.rejections"
EVENTS_QUEUE: Final = "events/jobs"
REJECTIONS_QUEUE: Final = "events/rejections"
# A tenant's name is the first word of its routing keys: no `.` (the topic word separator),
# no `*` or `#` (wildcards), nothing a regular expression would read as syntax.
TENANT_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_:-]{0,63}")
NOTHING: Final = "^$"
DEFAULT_OUT: Final = Path(__file__).resolve().parent / "generated"

Grant = dict[str, Any]


def password_hash(password: str, *, salt: bytes | None = None) -> str:
    """RabbitMQ's `rabbit_password_hashing_sha256`: base64(salt + sha256(salt + password))."""
    salt = secrets.token_bytes(4) if salt is None else salt
    digest = hashlib.sha256(salt + password.encode()).digest()
    return base64.b64encode(salt + digest).decode()


def _names(*names: str) -> str:
    return "^(" + "|".join(re.escape(name) for name in names) + ")$"


def service_grants(user: str = SERVICE_USER) -> tuple[Grant, list[Grant]]:
    """The service's permissions: what `service/adapters/amqp.py` declares, binds, publishes.

    Write on the queues is what `queue.bind` checks on its destination; read on the exchanges
    what it checks on its source. The binding key `#` is allowed by its topic permission, and
    the service may publish only the routing keys of the contract.
    """
    topology = _names(EVENTS_EXCHANGE, REJECTIONS_EXCHANGE, EVENTS_QUEUE, REJECTIONS_QUEUE)
    permission = {
        "user": user,
        "vhost": VHOST,
        "configure": topology,
        "write": topology,
        "read": _names(EVENTS_EXCHANGE, REJECTIONS_EXCHANGE),
    }
    topics = [
        _topic(
            user,
            EVENTS_EXCHANGE,
            write="^(events|counts|jobs|printers|printer-statuses)/",
            read="^#$",
        ),
        _topic(user, REJECTIONS_EXCHANGE, write="^rejections/", read="^#$"),
    ]
    return permission, topics


def tenant_grants(tenant: str) -> tuple[Grant, list[Grant]]:
    """A tenant's permissions: its own queues, and only its own routing keys (see above)."""
    if TENANT_NAME.fullmatch(tenant) is None:
        raise ValueError(f"tenant name {tenant!r} must match {TENANT_NAME.pattern}")
    own = f"tenants/{tenant}/"
    queues = f"^{re.escape(own)}.+$"
    permission = {
        "user": tenant,
        "vhost": VHOST,
        "configure": queues,
        "write": queues,
        "read": f"^({re.escape(own)}.+|{re.escape(EVENTS_EXCHANGE)}|"
        f"{re.escape(REJECTIONS_EXCHANGE)})$",
    }
    prefix = re.escape(tenant + ".")
    topics = [
        _topic(
            tenant,
            EVENTS_EXCHANGE,
            write=NOTHING,
            read=f"^(events|counts|jobs|printer-statuses)/{prefix}.+$",
        ),
        _topic(tenant, REJECTIONS_EXCHANGE, write=NOTHING, read=f"^rejections/{prefix}.+$"),
    ]
    return permission, topics


def reader_grants(reader: str) -> tuple[Grant, list[Grant]]:
    """An operator's consumer of the shared queues (every tenant's events)."""
    permission = {
        "user": reader,
        "vhost": VHOST,
        "configure": NOTHING,
        "write": NOTHING,
        "read": _names(EVENTS_QUEUE, REJECTIONS_QUEUE),
    }
    return permission, []


def _topic(user: str, exchange: str, *, write: str, read: str) -> Grant:
    return {"user": user, "vhost": VHOST, "exchange": exchange, "write": write, "read": read}


def definitions(
    passwords: dict[str, str],
    *,
    tenants: list[str],
    readers: list[str],
    service_user: str = SERVICE_USER,
) -> dict[str, Any]:
    """The definitions document for these users (every name must have a password)."""
    grants = [service_grants(service_user)]
    grants += [tenant_grants(tenant) for tenant in tenants]
    grants += [reader_grants(reader) for reader in readers]
    names = [permission["user"] for permission, _ in grants]
    if len(set(names)) != len(names):
        raise ValueError(f"user names must be distinct: {names}")
    return {
        # Imported on its own too: the vhost its permissions name must exist.
        "vhosts": [{"name": VHOST}],
        "users": [
            {
                "name": name,
                "password_hash": password_hash(passwords[name]),
                "hashing_algorithm": "rabbit_password_hashing_sha256",
                "tags": [],  # no management or administrator rights
                "limits": {},
            }
            for name in names
        ],
        "permissions": [permission for permission, _ in grants],
        "topic_permissions": [topic for _, topics in grants for topic in topics],
    }


def _write_private(path: Path, document: object) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        json.dump(document, file, indent=2)
        file.write("\n")
    os.chmod(path, 0o600)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument("--tenant", action="append", default=[], help="a tenant (repeatable)")
    parser.add_argument("--reader", action="append", default=[], help="a shared-queue reader")
    parser.add_argument("--service-user", default=SERVICE_USER)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    credentials_path = args.out / "credentials.json"
    old: dict[str, str] = {}
    if credentials_path.exists():
        old = json.loads(credentials_path.read_text())
    names = [args.service_user, *args.tenant, *args.reader]
    passwords = {name: old.get(name) or secrets.token_urlsafe(24) for name in names}
    try:
        document = definitions(
            passwords, tenants=args.tenant, readers=args.reader, service_user=args.service_user
        )
    except ValueError as exc:
        parser.error(str(exc))
    _write_private(args.out / "users.json", document)
    _write_private(credentials_path, passwords)
    # A command-line tool: it says what it wrote (never the passwords).
    print(f"wrote {args.out / 'users.json'} and {credentials_path} ({len(names)} users)")  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
