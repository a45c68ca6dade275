"""Who may send which command to which queue, and how often: API keys, as values.

A key is known by the SHA-256 digest of its text only (the keys file never holds a key),
and has the queues it may send to (shell-style patterns: `*` any run of characters, `?` one
character) and its scopes: `write:job` to create, cancel and update jobs, `read:job` to ask
for a job's status and a queue's counts. A plain key of `API_KEYS` may do everything on
every queue.

The keys file (TOML, its path in `API_KEYS_FILE`):

    [keys.acme-billing]
    sha256 = "<hex digest of the key>"     # printf %s "$KEY" | sha256sum
    queues = ["acme-*"]
    scopes = ["write:job", "read:job"]
    rate = 20                               # commands a second (default: API_KEY_RATE)
    burst = 40                              # at once, after a quiet spell (API_KEY_BURST)
    job_ids = ["acme.*"]                    # the ids its creates may take (default: any)

`job_ids` is what keeps a tenant's events its own on AMQP: a job event's routing key carries
only the job id, and the shipped RabbitMQ permissions let tenant T read the keys of ids that
begin with `T.` (deploy/rabbitmq/make_users.py); a key whose creates may take any id could
name its jobs into another tenant's events.

`AccessControl` answers the decoder: who the sender is (`authenticate`), whether the key is
over its rate (`admit`, one token bucket per key: a key over its limit is refused at once,
with the time to wait, and never delays another key), and whether it may send this command
to this queue (`authorize`). All of this module is pure: time comes in as `now`.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any, Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.models import MessageType

__all__ = [
    "AccessConfigError",
    "AccessControl",
    "ApiKey",
    "Forbidden",
    "KeyTable",
    "RateLimited",
    "Scope",
    "TokenBucket",
    "Unauthorized",
    "digest_of",
]

_NAME: Final = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
# A queueId's characters (see the contract's queueId) and the two wildcards.
_PATTERN: Final = r"^[A-Za-z0-9._:*?-]{1,128}$"
_SHA256_HEX: Final = r"^[0-9A-Fa-f]{64}$"


class AccessConfigError(Exception):
    """The keys configuration cannot be used; the message says where and why (never a key)."""


class Scope(StrEnum):
    write_job = "write:job"
    read_job = "read:job"


SCOPE_OF: Final[Mapping[MessageType, Scope]] = {
    MessageType.createPrintJob: Scope.write_job,
    MessageType.cancelPrintJob: Scope.write_job,
    MessageType.updatePrintJob: Scope.write_job,
    MessageType.movePrintJob: Scope.write_job,
    MessageType.releasePrintJob: Scope.write_job,
    MessageType.getPrintJobStatus: Scope.read_job,
    MessageType.getPrintCounts: Scope.read_job,
    MessageType.listPrintJobs: Scope.read_job,
    MessageType.getPrinterStatus: Scope.read_job,
}


def digest_of(key: str) -> bytes:
    """The SHA-256 digest a key is known by (any text, even lone surrogates, hashes)."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def _compile(patterns: Iterable[str]) -> re.Pattern[str]:
    """One regular expression matching a queueId any of the shell-style patterns matches."""
    alternatives = (
        "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
        for pattern in patterns
    )
    return re.compile("|".join(f"(?:{a})" for a in alternatives), re.DOTALL)


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiKey:
    """One key: its name (for logs; never the key), digest, queues, scopes and rate."""

    name: str
    digest: bytes
    queues: tuple[str, ...]
    scopes: frozenset[Scope]
    # None: the service's defaults (API_KEY_RATE, API_KEY_BURST); rate 0: no limit.
    rate: float | None = None
    burst: int | None = None
    job_ids: tuple[str, ...] = ("*",)
    _queue_match: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _job_match: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_queue_match", _compile(self.queues))
        object.__setattr__(self, "_job_match", _compile(self.job_ids))

    def may(self, queue_id: str, scope: Scope) -> bool:
        return scope in self.scopes and self._queue_match.fullmatch(queue_id) is not None

    def may_name(self, job_id: str) -> bool:
        """Whether a job this key creates may have `job_id`."""
        return self._job_match.fullmatch(job_id) is not None


class _KeySpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: Annotated[str, Field(pattern=_SHA256_HEX)]
    queues: Annotated[tuple[Annotated[str, Field(pattern=_PATTERN)], ...], Field(min_length=1)]
    scopes: Annotated[frozenset[Scope], Field(min_length=1)]
    rate: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    burst: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    job_ids: (
        Annotated[tuple[Annotated[str, Field(pattern=_PATTERN)], ...], Field(min_length=1)] | None
    ) = None


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    keys: dict[Annotated[str, Field(pattern=_NAME)], _KeySpec] = {}


@dataclass(frozen=True, slots=True)
class KeyTable:
    """The configured keys; no two share a name or a digest."""

    keys: tuple[ApiKey, ...] = ()

    def __post_init__(self) -> None:
        names: set[str] = set()
        digests: dict[bytes, str] = {}
        for key in self.keys:
            if key.name in names:
                raise AccessConfigError(f"two keys are named {key.name!r}")
            if key.digest in digests:
                raise AccessConfigError(
                    f"keys {digests[key.digest]!r} and {key.name!r} are the same key"
                )
            names.add(key.name)
            digests[key.digest] = key.name

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def plain(cls, keys: Iterable[str]) -> KeyTable:
        """`API_KEYS`: every scope on every queue, named by their place (`API_KEYS[1]`...)."""
        return cls(
            tuple(
                ApiKey(
                    name=f"API_KEYS[{n}]",
                    digest=digest_of(key),
                    queues=("*",),
                    scopes=frozenset(Scope),
                )
                for n, key in enumerate(keys, start=1)
            )
        )

    def merged(self, other: KeyTable) -> KeyTable:
        """Both tables' keys; an AccessConfigError if a name or a key is in both."""
        return KeyTable(self.keys + other.keys)

    def find(self, presented: str) -> ApiKey | None:
        """The key `presented` is, or None. Hashed once, then compared with every key's
        digest in constant time and without stopping at a match: the time it takes tells
        nothing of which key (nearly) matched."""
        given = digest_of(presented)
        found: ApiKey | None = None
        for key in self.keys:
            if hmac.compare_digest(given, key.digest):
                found = key
        return found

    @classmethod
    def from_toml(cls, text: str, *, source: str) -> KeyTable:
        """The keys in `text` (TOML); `source` names it in errors (the file)."""
        try:
            data = tomllib.loads(text)
        except (tomllib.TOMLDecodeError, RecursionError, ValueError) as exc:
            # RecursionError: arrays nested deeper than the parser goes.
            raise AccessConfigError(f"{source} is not valid TOML: {exc}") from None
        return cls.from_mapping(data, source=source)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "keys") -> KeyTable:
        try:
            parsed = _File.model_validate(data)
        except (ValidationError, RecursionError) as exc:
            raise AccessConfigError(f"invalid keys file {source}:\n{_errors(exc)}") from None
        return cls(
            tuple(
                ApiKey(
                    name=name,
                    digest=bytes.fromhex(spec.sha256),
                    queues=spec.queues,
                    scopes=spec.scopes,
                    rate=spec.rate,
                    burst=spec.burst,
                    job_ids=spec.job_ids or ("*",),
                )
                for name, spec in parsed.keys.items()
            )
        )


def _errors(exc: ValidationError | RecursionError) -> str:
    if isinstance(exc, RecursionError):
        return "  nested too deeply"
    # Never the input: a key's digest is no secret, but a mistaken file may hold a key.
    return "\n".join(
        f"  {'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
        for err in exc.errors(include_url=False, include_input=False)
    )


@dataclass(frozen=True, slots=True)
class Unauthorized:
    """No key, or one that is not configured: nothing else of the command is read."""

    message: str


@dataclass(frozen=True, slots=True)
class Forbidden:
    """A configured key that may not send this command to this queue."""

    message: str


@dataclass(frozen=True, slots=True)
class RateLimited:
    """The key is over its rate: the command is refused; `retry_after` seconds from now
    the next one would be taken."""

    retry_after: float
    message: str


@dataclass(slots=True, kw_only=True)
class TokenBucket:
    """`burst` commands at once, refilled at `rate` a second. Pure: the time is passed in."""

    rate: float
    burst: int
    tokens: float = field(default=-1.0)
    last: float | None = None

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = float(self.burst)

    def take(self, now: float) -> float:
        """0.0 when a command may go (one token is taken); else the seconds to wait."""
        if self.rate <= 0:
            return 0.0
        if self.last is not None and math.isfinite(now):
            # A clock that went back refills nothing (and is followed from where it is).
            self.tokens = min(
                float(self.burst), self.tokens + max(0.0, now - self.last) * self.rate
            )
        if math.isfinite(now):
            self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class AccessControl:
    """The keys in force and a token bucket per key: what the command decoder asks.

    `replace` swaps the keys (a reload) in one assignment; a key whose limit is unchanged
    keeps its bucket, so that a reload does not hand every key a fresh burst.
    """

    def __init__(self, table: KeyTable, *, rate: float, burst: int) -> None:
        if rate < 0 or burst < 1:
            raise ValueError("the rate must be >= 0 and the burst >= 1")
        self._rate = rate
        self._burst = burst
        self._table = table
        self._buckets: dict[str, TokenBucket] = {}

    @classmethod
    def plain(cls, keys: Iterable[str], *, rate: float = 0.0, burst: int = 1) -> AccessControl:
        """Every key may do everything (`API_KEYS`); no limit unless `rate` says one."""
        return cls(KeyTable.plain(keys), rate=rate, burst=burst)

    @property
    def table(self) -> KeyTable:
        return self._table

    def replace(self, table: KeyTable) -> None:
        kept = {
            key.name: bucket
            for key in table.keys
            if (bucket := self._buckets.get(key.name)) is not None
            and (bucket.rate, bucket.burst) == self._limit(key)
        }
        self._table = table
        self._buckets = kept

    def authenticate(self, presented: object) -> ApiKey | Unauthorized:
        if presented is None:
            return Unauthorized("x-api-key is missing")
        if not isinstance(presented, str):
            return Unauthorized("x-api-key is not valid")
        key = self._table.find(presented)
        return key if key is not None else Unauthorized("x-api-key is not valid")

    def admit(self, key: ApiKey, now: float) -> RateLimited | None:
        """Take one of the key's tokens, or say how long to wait for one."""
        rate, burst = self._limit(key)
        if rate <= 0:
            return None
        bucket = self._buckets.get(key.name)
        if bucket is None:
            bucket = self._buckets[key.name] = TokenBucket(rate=rate, burst=burst)
        wait = bucket.take(now)
        if wait <= 0:
            return None
        # Rounded up to the millisecond: waiting that long is always enough.
        retry_after = math.ceil(wait * 1000) / 1000
        return RateLimited(
            retry_after=retry_after,
            message=(
                f"this key may send {rate:g} commands a second ({burst} at once); "
                f"retry after {retry_after:g} s"
            ),
        )

    def authorize(self, key: ApiKey, queue_id: str, message_type: MessageType) -> Forbidden | None:
        scope = SCOPE_OF[message_type]
        if scope not in key.scopes:
            return Forbidden(f"this key lacks the {scope.value} scope ({message_type.value})")
        if not key.may(queue_id, scope):
            return Forbidden(f"this key may not send commands to queue {queue_id!r}")
        return None

    def may_move_to(self, key: ApiKey, queue_id: str) -> Forbidden | None:
        """Whether `key` may put a job on `queue_id` (a move's target): `write:job` there,
        as a create on that queue would need; the move's own queue is checked as for
        every command."""
        if not key.may(queue_id, Scope.write_job):
            return Forbidden(f"this key may not move jobs to queue {queue_id!r}")
        return None

    def may_create(self, key: ApiKey, job_id: str) -> Forbidden | None:
        """Whether `key` may create a job named `job_id` (its `job_ids` patterns)."""
        if key.may_name(job_id):
            return None
        return Forbidden(f"this key may only create jobs whose id matches {', '.join(key.job_ids)}")

    def verdict(
        self, presented: object, queue_id: str, message_type: MessageType, now: float
    ) -> ApiKey | Unauthorized | RateLimited | Forbidden:
        """All three checks in the decoder's order: the key, its rate, its rights."""
        key = self.authenticate(presented)
        if isinstance(key, Unauthorized):
            return key
        return self.admit(key, now) or self.authorize(key, queue_id, message_type) or key

    def _limit(self, key: ApiKey) -> tuple[float, int]:
        rate = self._rate if key.rate is None else key.rate
        burst = self._burst if key.burst is None else key.burst
        return rate, burst
