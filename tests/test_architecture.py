"""The layers, as rules a change cannot break unnoticed.

- `service/core/` is pure: it imports only the standard library's pure parts, pydantic, the
  generated models and itself (no asyncio, no sockets, no files, no logging);
- `service/application/` (the handler, the dispatcher, the relay) speaks only to ports: it
  imports no adapter and no transport or database library;
- `service/adapters/` serve the application through the ports and never import it;
- `service/client/` (the integrators' library) speaks the contract only: it imports the
  models, the core, the configuration and the TLS settings, never the service's insides;
- every module says what it exports (`__all__`), and exports only what it defines.
"""

from __future__ import annotations

import ast
import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "service"

# Libraries that do I/O or stand for a transport: only adapters (and the wiring) use them.
TRANSPORTS = frozenset(
    {"aiomqtt", "paho", "aio_pika", "aiormq", "pamqp", "psycopg", "psycopg_pool", "httpx"}
    | {"sqlite3", "socket", "ssl", "aiohttp", "prometheus_client"}
)
CORE_MAY_IMPORT = frozenset(
    {"__future__", "collections", "dataclasses", "datetime", "enum", "functools", "heapq"}
    | {"itertools", "json", "math", "random", "re", "string", "typing", "uuid", "zlib"}
    | {"tomllib", "base64", "binascii", "hashlib", "hmac", "secrets", "unicodedata"}
    | {"ipaddress", "pathlib", "pydantic", "service"}
)


def modules(under: Path) -> Iterator[Path]:
    yield from sorted(under.rglob("*.py"))


def dotted(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> Iterator[str]:
    """Every module `path` imports, at any depth of its code (imports inside functions too)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def within(name: str, *packages: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def only_a_docstring(path: Path) -> bool:
    body = ast.parse(path.read_text()).body
    return all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)


def ids(paths: Iterator[Path]) -> list[pytest.param]:  # type: ignore[valid-type]
    return [pytest.param(p, id=dotted(p)) for p in paths]


@pytest.mark.parametrize("path", ids(modules(PACKAGE / "core")))
def test_the_core_is_pure(path: Path) -> None:
    for name in imports(path):
        top = name.split(".")[0]
        assert top in CORE_MAY_IMPORT, f"{dotted(path)} imports {name}: the core does no I/O"
        if top == "service":
            assert within(name, "service.core", "service.models"), (
                f"{dotted(path)} imports {name}: the core depends on nothing outside it"
            )


@pytest.mark.parametrize("path", ids(modules(PACKAGE / "application")))
def test_the_application_speaks_only_to_ports(path: Path) -> None:
    for name in imports(path):
        assert name.split(".")[0] not in TRANSPORTS, (
            f"{dotted(path)} imports {name}: a transport belongs in service/adapters/"
        )
        assert not within(name, "service.adapters", "service.app", "service.cli"), (
            f"{dotted(path)} imports {name}: the application knows adapters by their ports"
        )


@pytest.mark.parametrize("path", ids(modules(PACKAGE / "adapters")))
def test_adapters_do_not_import_the_application(path: Path) -> None:
    for name in imports(path):
        assert not within(name, "service.application", "service.app", "service.cli"), (
            f"{dotted(path)} imports {name}: an adapter serves the application through a port"
        )


# What the client may import of the service: what any integrator's code could use too.
CLIENT_MAY_IMPORT = ("service.client", "service.models", "service.core", "service.config")
CLIENT_MAY_IMPORT_ALSO = ("service.tls",)


@pytest.mark.parametrize("path", ids(modules(PACKAGE / "client")))
def test_the_client_depends_on_the_contract_only(path: Path) -> None:
    for name in imports(path):
        if within(name, "service"):
            assert within(name, *CLIENT_MAY_IMPORT, *CLIENT_MAY_IMPORT_ALSO), (
                f"{dotted(path)} imports {name}: the client library stays out of the service"
            )


EXEMPT = {"service.models", "service.__main__"}  # generated; the `python -m` entry


@pytest.mark.parametrize(
    "path",
    ids(p for p in modules(PACKAGE) if dotted(p) not in EXEMPT and not only_a_docstring(p)),
)
def test_every_module_says_what_it_exports(path: Path) -> None:
    name = dotted(path)
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    assert len(set(exported)) == len(exported), f"{name}.__all__ names something twice"
    for symbol in exported:
        assert hasattr(module, symbol), f"{name}.__all__ names {symbol}, which it lacks"
    assert name in sys.modules
