#!/usr/bin/env python3
"""Generate the broker's credentials from roles.json: nothing secret is ever committed.

    deploy/mosquitto/make_credentials.py [--out deploy/mosquitto/credentials] [--host H]

roles.json names the clients (one for the service, one per integrator connection), their
roles and what each role may do. This script checks the rules below, gives every client a
random password and writes, into the git-ignored output directory:

- dynamic-security.json: roles.json with each client's password hash (PBKDF2-SHA512, the
  dynamic-security plugin's own format); the broker's `plugin_opt_config_file`.
- <user>.password: each client's password (mode 0600), for the integrator or the service.
- service.env: `MQTT_URL=mqtt://print-service:<password>@<host>:<port>`, for the service.
- credentials.json: every client's password, {user: password} (mode 0600), as
  deploy/rabbitmq/make_users.py writes its own: what deploy/compose/make_env.py reads.

Passwords already in the output directory are kept (so adding an integrator does not change
the others'); `--rotate` makes new ones. The broker reads the file at start: restart it.

The rules, so that a mistake in roles.json cannot open the broker:
- exactly one client is the service (`print-service`); it has no fixed client id, because
  each replica connects with its own;
- every other client is an integrator: it is bound to a client id equal to its user name,
  which must not start with `print-service` (the service's client ids are reserved for it),
  and its roles may only publish (publishClientSend) to `commands/<queue>` topics, named
  one by one (no wildcards): it reads nothing, subscribes to nothing;
- no role but the service's is given to an integrator; no client carries a password in
  roles.json.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ITERATIONS",
    "RESERVED_CLIENT_ID_PREFIX",
    "SERVICE_ROLE",
    "SERVICE_USER",
    "Generated",
    "RolesError",
    "check_roles",
    "generate",
    "password_fields",
]

HERE = Path(__file__).resolve().parent
SERVICE_USER = "print-service"
SERVICE_ROLE = "print-service"
# The service's client ids (MQTT_CLIENT_ID: `print-service-<host>` by default, the pod name
# in Kubernetes) start with this; no integrator may be bound to one.
RESERVED_CLIENT_ID_PREFIX = "print-service"
# The plugin's default. Passwords are 256 random bits, so more rounds add no protection
# against guessing; they would only make every connection attempt (a failing one too) cost
# the broker more CPU.
ITERATIONS = 101
SALT_BYTES = 12  # the plugin accepts exactly this length
USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
COMMAND_TOPIC = re.compile(r"commands/[^/+#$]+")


class RolesError(ValueError):
    """roles.json breaks a rule; the message says which."""


@dataclass(frozen=True, kw_only=True)
class Generated:
    """What one run wrote: the output directory and each user's password."""

    out: Path
    passwords: dict[str, str]

    @property
    def config(self) -> Path:
        return self.out / "dynamic-security.json"

    def password_file(self, user: str) -> Path:
        return self.out / f"{user}.password"


def check_roles(roles: dict[str, Any]) -> None:
    """Raise RolesError unless `roles` keeps every rule of the module docstring."""
    problems: list[str] = []
    role_acls = {r.get("rolename"): r.get("acls", []) for r in roles.get("roles", [])}
    users = [c.get("username") for c in roles.get("clients", [])]
    if len(set(users)) != len(users):
        problems.append("a user name is listed twice")
    if users.count(SERVICE_USER) != 1:
        problems.append(f"exactly one client must be the service, {SERVICE_USER!r}")
    if roles.get("groups"):
        problems.append("groups are not used: give each client its roles")
    for client in roles.get("clients", []):
        user = client.get("username")
        if not isinstance(user, str) or not USER_NAME.fullmatch(user):
            problems.append(f"bad user name {user!r} (letters, digits, . _ -; 64 at most)")
            continue
        if {"password", "salt", "iterations"} & client.keys():
            problems.append(f"{user}: no password in roles.json (this script generates it)")
        names = [r.get("rolename") for r in client.get("roles", [])]
        problems += [f"{user}: unknown role {n!r}" for n in names if n not in role_acls]
        if user == SERVICE_USER:
            problems += _service_problems(client, names)
        else:
            problems += _integrator_problems(client, names, role_acls)
    if problems:
        raise RolesError("roles.json: " + "; ".join(problems))


def _service_problems(client: dict[str, Any], names: list[str]) -> list[str]:
    problems = []
    if "clientid" in client:
        problems.append(f"{SERVICE_USER}: each replica has its own client id; bind none")
    if names != [SERVICE_ROLE]:
        problems.append(f"{SERVICE_USER}: must have the role {SERVICE_ROLE!r} alone")
    return problems


def _integrator_problems(
    client: dict[str, Any], names: list[str], role_acls: dict[str, list[dict[str, Any]]]
) -> list[str]:
    user = client["username"]
    problems = []
    if client.get("clientid") != user:
        problems.append(f"{user}: an integrator's client id must be bound to its user name")
    if user.startswith(RESERVED_CLIENT_ID_PREFIX):
        problems.append(f"{user}: client ids {RESERVED_CLIENT_ID_PREFIX}* are the service's")
    if SERVICE_ROLE in names:
        problems.append(f"{user}: only the service has the role {SERVICE_ROLE!r}")
    for name in names:
        problems += [
            f"{user}: role {name!r} may not grant {acl}"
            for acl in role_acls.get(name, [])
            if not _integrator_acl(acl)
        ]
    return problems


def _integrator_acl(acl: dict[str, Any]) -> bool:
    """An integrator may publish to named command topics, and be denied anything."""
    if acl.get("allow") is False:
        return True
    topic = acl.get("topic", "")
    return acl.get("acltype") == "publishClientSend" and bool(COMMAND_TOPIC.fullmatch(topic))


def password_fields(password: str, *, salt: bytes | None = None) -> dict[str, Any]:
    """A client's `password`, `salt` and `iterations`, as the dynamic-security plugin keeps them."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, ITERATIONS)
    return {
        "password": base64.b64encode(digest).decode(),
        "salt": base64.b64encode(salt).decode(),
        "iterations": ITERATIONS,
    }


def generate(
    roles_file: Path, out: Path, *, host: str = "127.0.0.1", port: int = 1883, rotate: bool = False
) -> Generated:
    roles = json.loads(roles_file.read_text())
    check_roles(roles)
    out.mkdir(parents=True, exist_ok=True)
    passwords: dict[str, str] = {}
    for client in roles["clients"]:
        user = client["username"]
        kept = out / f"{user}.password"
        password = kept.read_text().strip() if kept.exists() and not rotate else ""
        # URL-safe characters only: the password goes into MQTT_URL as it is.
        password = password or secrets.token_urlsafe(32)
        passwords[user] = password
        client.update(password_fields(password))
        _write_secret(kept, password + "\n")
    # Hashes only; readable by the broker, which runs as its own user.
    config = out / "dynamic-security.json"
    config.write_text(json.dumps(roles, indent=2) + "\n")
    config.chmod(0o644)
    service_url = f"mqtt://{SERVICE_USER}:{passwords[SERVICE_USER]}@{host}:{port}"
    _write_secret(out / "service.env", f"MQTT_URL={service_url}\n")
    _write_secret(out / "credentials.json", json.dumps(passwords, indent=2) + "\n")
    return Generated(out=out, passwords=passwords)


def _write_secret(path: Path, text: str) -> None:
    # Created 0600 from the start: never readable by others, not even for a moment.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)
    path.chmod(0o600)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--roles", type=Path, default=HERE / "roles.json")
    parser.add_argument("--out", type=Path, default=HERE / "credentials")
    parser.add_argument("--host", default="127.0.0.1", help="broker host in service.env")
    parser.add_argument("--port", type=int, default=1883, help="broker port in service.env")
    parser.add_argument("--rotate", action="store_true", help="new passwords for everyone")
    args = parser.parse_args(argv)
    try:
        generated = generate(
            args.roles, args.out, host=args.host, port=args.port, rotate=args.rotate
        )
    except (RolesError, OSError, json.JSONDecodeError) as exc:
        print(f"make_credentials: {exc}", file=sys.stderr)  # noqa: T201 - a command-line tool
        return 1
    print(f"broker config: {generated.config}")  # noqa: T201
    for user in generated.passwords:
        print(f"{user}: password in {generated.password_file(user)}")  # noqa: T201
    print(f"service: MQTT_URL in {generated.out / 'service.env'}")  # noqa: T201
    print(f"every password: {generated.out / 'credentials.json'}")  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
