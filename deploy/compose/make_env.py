#!/usr/bin/env python3
"""Generate the secrets of the local compose stack (docker-compose.yml); none is committed.

    python3 deploy/compose/make_env.py         # once, before `docker compose up`
    python3 deploy/compose/make_env.py --root DIR   # the same files under DIR instead

1. The brokers' own generators make their users (the roles and permissions are theirs):
       deploy/mosquitto/make_credentials.py --out deploy/mosquitto/credentials
       deploy/rabbitmq/make_users.py --out deploy/rabbitmq/generated --tenant T ...
   Each leaves, beside the files its broker reads, `credentials.json` ({user: password}).
   The tenants are Mosquitto's integrators (deploy/mosquitto/roles.json, every client but
   the service), so both brokers know the same tenants.
2. This script adds what is the stack's own: PostgreSQL's password, an API key for local
   use (queues `example-tenant.*`) and a throwaway OAuth 2 signing key pair for RabbitMQ
   (the `openssl` command), and writes (every directory git-ignored):
       .env                                       what compose substitutes into
                                                  docker-compose.yml: the service's URLs
                                                  with their passwords, PostgreSQL's (0600)
       deploy/compose/secrets/keys/api-keys.toml  the service's API_KEYS_FILE: the key's
                                                  SHA-256 only (0644: the container's user
                                                  must read it, and a digest of 256 random
                                                  bits reveals nothing)
       deploy/compose/secrets/api-key             the key, for `--api-key-file` (0600)
       deploy/compose/secrets/client.env          for the CLI on this machine (0600):
                                                  MQTT_URL, AMQP_URL (the tenant's users)
                                                  and PRINT_API_KEY; read it with
           set -a; . deploy/compose/secrets/client.env; set +a
       deploy/compose/secrets/oauth2/print-api-1.key  the private key (0600), to sign
                                                  test tokens (RS256, kid print-api-1)
       deploy/compose/secrets/oauth2/print-api-1.pem  its public key (0644), mounted as
                                                  RabbitMQ's signing key

Run again, it keeps every value (a PostgreSQL volume keeps the password it was created
with, the brokers' generators keep theirs). To rotate: delete .env and
deploy/compose/secrets/ (and the brokers' credentials), then `docker compose down -v`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Final
from urllib.parse import quote

__all__ = [
    "SERVICE_USER",
    "TENANT",
    "Generator",
    "Layout",
    "api_keys_toml",
    "main",
    "parse_env",
    "render_env",
]

SERVICE_USER: Final = "print-service"  # the service's user on both brokers
TENANT: Final = "example-tenant"  # the integrator the CLI on this machine acts as
DATABASE_USER: Final = "print"  # POSTGRES_USER in docker-compose.yml
API_KEY_NAME: Final = "local"
SIGNING_KEY_ID: Final = "print-api-1"  # auth_oauth2.default_key in deploy/rabbitmq/rabbitmq.conf
REPOSITORY: Final = Path(__file__).resolve().parents[2]
# Values are written single-quoted (literal for compose and for sh): no quote, no newline.
_SAFE_VALUE: Final = re.compile(r"[^'\n\r\x00]*")
_ENV_LINE: Final = re.compile(r"([A-Z][A-Z0-9_]*)='([^']*)'")


class Generator:
    """A broker's generator: the script, the directory it writes, and its arguments."""

    def __init__(self, *, script: Path, out: Path) -> None:
        self.script = script
        self.out = out

    def run(self, *args: str) -> dict[str, str]:
        """Run it, then the passwords it wrote: {user: password}."""
        if not self.script.is_file():
            raise SystemExit(f"make_env: {self.script} is missing: it makes the broker's users")
        subprocess.run(  # noqa: S603 - our own script, our arguments
            [sys.executable, str(self.script), "--out", str(self.out), *args], check=True
        )
        credentials = json.loads((self.out / "credentials.json").read_text(encoding="utf-8"))
        if not isinstance(credentials, dict) or not all(
            isinstance(v, str) and v for v in credentials.values()
        ):
            raise SystemExit(f"make_env: {self.out / 'credentials.json'} is not {{user: password}}")
        return {str(k): v for k, v in credentials.items()}


class Layout:
    """Where everything is: the generators in `source` (a repository), what they and this
    script write under `root` (the same repository, unless told otherwise)."""

    def __init__(self, root: Path, source: Path | None = None) -> None:
        source = root if source is None else source
        self.root = root
        self.env = root / ".env"
        self.secrets = root / "deploy" / "compose" / "secrets"
        self.keys_file = self.secrets / "keys" / "api-keys.toml"
        self.key = self.secrets / "api-key"
        self.client_env = self.secrets / "client.env"
        self.signing_key = self.secrets / "oauth2" / f"{SIGNING_KEY_ID}.key"
        self.signing_public_key = self.secrets / "oauth2" / f"{SIGNING_KEY_ID}.pem"
        self.mosquitto = Generator(
            script=source / "deploy" / "mosquitto" / "make_credentials.py",
            out=root / "deploy" / "mosquitto" / "credentials",
        )
        self.rabbitmq = Generator(
            script=source / "deploy" / "rabbitmq" / "make_users.py",
            out=root / "deploy" / "rabbitmq" / "generated",
        )


def render_env(values: Mapping[str, str], *, header: str) -> str:
    """An env file that compose and sh read alike: NAME='value', literally."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    for name, value in values.items():
        if _SAFE_VALUE.fullmatch(value) is None:
            raise ValueError(f"{name}: a value with a quote or a line break")
        lines.append(f"{name}='{value}'")
    return "\n".join(lines) + "\n"


def parse_env(text: str) -> dict[str, str]:
    """The values of a file render_env wrote (comments and other lines are skipped)."""
    return {m[1]: m[2] for line in text.splitlines() if (m := _ENV_LINE.fullmatch(line.strip()))}


def api_keys_toml(key: str, *, name: str = API_KEY_NAME) -> str:
    """The keys file with this one key: its digest, the tenant's queues, both scopes."""
    digest = hashlib.sha256(key.encode()).hexdigest()
    return (
        "# Generated by deploy/compose/make_env.py for the local stack. The key itself is in\n"
        "# deploy/compose/secrets/api-key; only its SHA-256 is here.\n"
        f"[keys.{name}]\n"
        f'sha256 = "{digest}"\n'
        f'queues = ["{TENANT}.*"]\n'
        'scopes = ["write:job", "read:job"]\n'
    )


def _url(scheme: str, user: str, password: str, host: str, rest: str) -> str:
    return f"{scheme}://{quote(user, safe='')}:{quote(password, safe='')}@{host}{rest}"


def _write(path: Path, text: str, mode: int) -> None:
    """Replace `path` atomically (a reader, the service's key reload included, never sees
    half a file), created with `mode` from the start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as stream:
        stream.write(text)
    temporary.chmod(mode)
    temporary.replace(path)


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8") if path.is_file() else ""


def _signing_keys(private: Path, public: Path) -> None:
    """A throwaway RSA key pair for the local RabbitMQ's OAuth 2 backend (it does not start
    without a public key), kept once made; the private key never leaves this machine."""
    if private.is_file() and public.is_file():
        return
    openssl = shutil.which("openssl")
    if openssl is None:
        raise SystemExit("make_env: the `openssl` command makes RabbitMQ's OAuth 2 key pair")
    private.parent.mkdir(parents=True, exist_ok=True)
    private.parent.chmod(0o700)
    temporary = private.with_name(f".{private.name}.tmp")
    temporary.unlink(missing_ok=True)
    # Created 0600 before openssl writes into it (openssl keeps an existing file's mode).
    os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    rsa = ("-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048")
    subprocess.run(  # noqa: S603 - fixed arguments
        [openssl, "genpkey", *rsa, "-out", str(temporary)],
        check=True,
        capture_output=True,
    )
    result = subprocess.run(  # noqa: S603 - fixed arguments
        [openssl, "pkey", "-in", str(temporary), "-pubout"],
        check=True,
        capture_output=True,
        text=True,
    )
    temporary.chmod(0o600)
    temporary.replace(private)
    # Read by the broker's own user through the mount: a public key is no secret.
    _write(public, result.stdout, 0o644)


def main(argv: list[str] | None = None, *, root: Path | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--root",
        type=Path,
        help="write every file under this directory instead of the repository",
    )
    args = parser.parse_args(argv)
    source = root or REPOSITORY
    layout = Layout(args.root.resolve() if args.root else source, source)
    mqtt = layout.mosquitto.run()
    missing = {SERVICE_USER, TENANT} - mqtt.keys()
    if missing:
        raise SystemExit(f"make_env: the mosquitto generator made no user {sorted(missing)}")
    # The same tenants on both brokers: Mosquitto's integrators.
    tenants = sorted(mqtt.keys() - {SERVICE_USER})
    amqp = layout.rabbitmq.run(*(arg for tenant in tenants for arg in ("--tenant", tenant)))
    missing = {SERVICE_USER, *tenants} - amqp.keys()
    if missing:
        raise SystemExit(f"make_env: the rabbitmq generator made no user {sorted(missing)}")

    old = parse_env(_read(layout.env))
    database_password = old.get("POSTGRES_PASSWORD") or secrets.token_urlsafe(24)
    key = _read(layout.key).strip() or secrets.token_urlsafe(32)

    layout.secrets.mkdir(parents=True, exist_ok=True)
    layout.secrets.chmod(0o700)
    _signing_keys(layout.signing_key, layout.signing_public_key)
    _write(
        layout.env,
        render_env(
            {
                "POSTGRES_PASSWORD": database_password,
                "PRINT_DATABASE_URL": _url(
                    "postgresql", DATABASE_USER, database_password, "postgres:5432", "/print"
                ),
                "PRINT_MQTT_URL": _url(
                    "mqtt", SERVICE_USER, mqtt[SERVICE_USER], "mosquitto:1883", ""
                ),
                "PRINT_AMQP_URL": _url(
                    "amqp", SERVICE_USER, amqp[SERVICE_USER], "rabbitmq:5672", "/"
                ),
            },
            header="The local compose stack's secrets, from deploy/compose/make_env.py.\n"
            "Never commit this file (it is git-ignored).",
        ),
        0o600,
    )
    _write(layout.key, key + "\n", 0o600)
    # The keys file lives in a directory of its own, mounted whole: a file replaced by a
    # rename is seen through a directory mount (a single-file mount keeps the old inode).
    layout.keys_file.parent.mkdir(parents=True, exist_ok=True)
    layout.keys_file.parent.chmod(0o755)
    _write(layout.keys_file, api_keys_toml(key), 0o644)
    _write(
        layout.client_env,
        render_env(
            {
                "MQTT_URL": _url("mqtt", TENANT, mqtt[TENANT], "127.0.0.1:1883", ""),
                "AMQP_URL": _url("amqp", TENANT, amqp[TENANT], "127.0.0.1:5672", "/"),
                "PRINT_API_KEY": key,
            },
            header=f"The CLI on this machine, as {TENANT} (deploy/compose/make_env.py):\n"
            "  set -a; . deploy/compose/secrets/client.env; set +a",
        ),
        0o600,
    )
    sys.stdout.write(
        f"wrote {layout.env}, {layout.keys_file}, {layout.key}, {layout.client_env} and "
        f"{layout.signing_public_key}\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
