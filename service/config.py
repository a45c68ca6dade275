"""Configuration from environment variables, validated once at start.

Every variable is listed in README.md; `Settings.from_env()` reports all bad ones at once.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, ClassVar, Final, Literal
from urllib.parse import unquote, urlsplit

from pydantic import AfterValidator, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.core.access import AccessControl, KeyTable
from service.core.addresses import AddressPolicy
from service.core.queues import QueueConfigError, QueueMap

__all__ = ["MAX_PUBLISH_CONCURRENCY", "BrokerUrl", "ConfigError", "Settings"]

# Publishes the relay may have waiting for the broker's confirm at once (PUBLISH_CONCURRENCY).
MAX_PUBLISH_CONCURRENCY: Final = 10_000


class ConfigError(Exception):
    """The environment does not describe a runnable service; the message says what to fix."""


class BrokerUrl:
    """A parsed broker URL: scheme, host, port, credentials, TLS."""

    DEFAULT_PORTS: ClassVar[Mapping[str, int]] = MappingProxyType(
        {"mqtt": 1883, "mqtts": 8883, "amqp": 5672, "amqps": 5671}
    )

    def __init__(self, url: str, *, schemes: tuple[str, str]) -> None:
        parts = urlsplit(url)
        if parts.scheme not in schemes:
            raise ValueError(f"scheme must be {' or '.join(schemes)}, not {parts.scheme!r}")
        if not parts.hostname:
            raise ValueError("has no host")
        self.url = url
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or self.DEFAULT_PORTS[parts.scheme]
        self.username = unquote(parts.username) if parts.username is not None else None
        self.password = unquote(parts.password) if parts.password is not None else None
        self.path = parts.path
        self.tls = parts.scheme.endswith("s")

    def redacted(self) -> str:
        """The URL without its password, for logs."""
        user = f"{self.username}@" if self.username else ""
        return f"{self.scheme}://{user}{self.host}:{self.port}{self.path}"


def _mqtt_url(value: str) -> str:
    BrokerUrl(value, schemes=("mqtt", "mqtts"))
    return value


def _amqp_url(value: str) -> str:
    BrokerUrl(value, schemes=("amqp", "amqps"))
    return value


def _database_url(value: str) -> str:
    if value == "memory://" or value.startswith(("postgresql://", "postgres://")):
        return value
    if value.startswith("sqlite:///") and len(value) > len("sqlite:///"):
        return value
    raise ValueError(
        "must be sqlite:///<relative path>, sqlite:////<absolute path>, "
        "postgresql://user@host/db, or memory://"
    )


def _default_client_id() -> str:
    # Stable across restarts of the same pod or host, so the persistent session is resumed.
    return f"print-service-{socket.gethostname()}"[:64]


class Settings(BaseSettings):
    """The service's settings. Names are the environment variables, upper-cased."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    mqtt_url: Annotated[str, AfterValidator(_mqtt_url)] = "mqtt://127.0.0.1:1883"
    mqtt_client_id: str = Field(default_factory=_default_client_id, min_length=1, max_length=64)
    mqtt_protocol: Literal["5", "3.1.1"] = "5"
    mqtt_keepalive: int = Field(default=60, ge=5, le=65535)
    mqtt_session_expiry: int = Field(default=86_400, ge=0)
    mqtt_commands_topic: str = "commands/+"
    # Replicas with the same group share the commands: each goes to one of them.
    mqtt_shared_group: str = Field(default="", pattern=r"^[^/+#]*$")
    mqtt_last_will_topic: str = "/last-wills"
    mqtt_batch_size: int = Field(default=256, ge=1, le=10_000)
    mqtt_receive_maximum: int = Field(default=1024, ge=1, le=65_535)
    mqtt_ca_file: Path | None = None
    mqtt_cert_file: Path | None = None
    mqtt_key_file: Path | None = None

    amqp_url: Annotated[str, AfterValidator(_amqp_url)] = "amqp://guest:guest@127.0.0.1:5672/"
    amqp_ca_file: Path | None = None
    amqp_cert_file: Path | None = None
    amqp_key_file: Path | None = None
    event_gzip: bool = True
    publish_concurrency: int = Field(default=256, ge=1, le=MAX_PUBLISH_CONCURRENCY)

    # --- Who may send what (README: Security). Without keys the service does not start,
    # unless AUTH_DISABLED says so explicitly: a forgotten secret must not open it to all.
    # Plain keys: every scope on every queue (in order: logs name them API_KEYS[n]).
    api_keys: Annotated[tuple[str, ...], NoDecode] = ()
    # Keys by SHA-256 digest, with their queues, scopes and rates (TOML); reloaded on change.
    api_keys_file: Path | None = None
    auth_disabled: bool = False
    # A key's commands a second and at once, unless its entry says otherwise (0: no limit).
    # About a tenth of what one replica applies (see Benchmark): no key can take it all, and
    # a burst lets an integrator send a batch (or its backlog after a reconnect) at once.
    api_key_rate: float = Field(default=100.0, ge=0, allow_inf_nan=False)
    api_key_burst: int = Field(default=200, ge=1, le=1_000_000)

    max_message_bytes: int = Field(default=1_048_576, ge=256)
    max_decompressed_bytes: int = Field(default=4_194_304, ge=256)

    database_url: Annotated[str, AfterValidator(_database_url)] = "sqlite:///print-service.db"
    store_synchronous: Literal["FULL", "NORMAL"] = "FULL"
    store_commit_delay: float = Field(default=0.001, ge=0, le=1)
    outbox_ready_limit: int = Field(default=100_000, ge=1)
    store_open_timeout: float = Field(default=30.0, gt=0)
    # PostgreSQL, several replicas: how long a replica's lanes stay its own without a
    # renewal (the backstop when its last will is lost); 0: MQTT_KEEPALIVE.
    replica_lease_seconds: float = Field(default=0.0, ge=0)
    # An event the AMQP broker refuses this many times, published alone, is parked.
    dead_letter_after: int = Field(default=3, ge=1, le=100)

    print_duration: float = Field(default=2.0, ge=0)
    # Queues and their printers (TOML); unset: one simulated printer per queueId.
    print_queues_file: Path | None = None
    document_max_bytes: int = Field(default=104_857_600, ge=1)
    document_fetch_timeout: float = Field(default=30.0, gt=0)
    # Where documents fetched by URL are spooled while they print; unset: the system's.
    document_spool_dir: Path | None = None
    # Host names (`docs.corp`, `*.corp`) and networks (`10.1.0.0/16`) documents may be fetched
    # from although they are not public; everything else that is not public is refused.
    document_allow_hosts: Annotated[tuple[str, ...], NoDecode] = ()
    # A job whose printing the service's stop interrupted this many times fails instead.
    print_max_interruptions: int = Field(default=3, ge=1, le=100)
    # At most one progress event (a repeated `started`) per job per this many seconds; 0: none.
    progress_interval: float = Field(default=5.0, ge=0)
    # How long final jobs are kept (seconds, or an ISO 8601 duration such as P7D), then
    # purged with their history, JOB_PURGE_BATCH a transaction, JOB_PURGE_PAUSE apart.
    job_retention: timedelta = Field(default=timedelta(days=7), gt=timedelta(0))
    job_purge_batch: int = Field(default=500, ge=1, le=100_000)
    job_purge_pause: float = Field(default=0.5, ge=0)
    # How often the retention looks for jobs to purge once it has caught up.
    job_purge_interval: float = Field(default=60.0, gt=0)
    # The most jobs a `listPrintJobs` page holds (a larger `limit` is lowered to it).
    job_list_max: int = Field(default=100, ge=1, le=10_000)
    # How long a held job waits for its release before it is canceled (`hold_expired`),
    # unless its queue sets `hold_timeout`; seconds or an ISO 8601 duration (PT8H).
    hold_timeout: timedelta = Field(default=timedelta(days=1), gt=timedelta(0))
    # Wrong release PINs that cancel a held job (the last one included).
    hold_pin_attempts: int = Field(default=5, ge=1, le=100)
    # How often the printers of the lanes this replica holds are asked for their status
    # (a `printerStatus` event goes out only when one changed).
    printer_status_interval: float = Field(default=10.0, gt=0)

    http_host: str = "0.0.0.0"
    http_port: int = Field(default=8080, ge=0, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    shutdown_timeout: float = Field(default=20.0, gt=0)

    @field_validator("job_retention", "hold_timeout", mode="before")
    @classmethod
    def _seconds(cls, value: object) -> object:
        # A plain number is seconds; anything else is pydantic's (P7D, 7 days, 12:00:00).
        if isinstance(value, str):
            try:
                return timedelta(seconds=float(value))
            except ValueError:
                return value
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            value = [k.strip() for k in value.split(",")]
        elif isinstance(value, (set, frozenset)):
            value = sorted(value)
        if isinstance(value, (list, tuple)):
            # Each key once, in the order given.
            return tuple(dict.fromkeys(k for k in value if k))
        return value

    @field_validator("document_allow_hosts", mode="before")
    @classmethod
    def _allow_list(cls, value: object) -> object:
        entries = value.split(",") if isinstance(value, str) else value
        if isinstance(entries, list | tuple | set | frozenset):
            entries = tuple(str(e).strip() for e in entries if str(e).strip())
            AddressPolicy.from_entries(entries)  # a ValueError names the bad entry
        return entries

    @field_validator(
        "mqtt_ca_file",
        "mqtt_cert_file",
        "mqtt_key_file",
        "amqp_ca_file",
        "amqp_cert_file",
        "amqp_key_file",
        "print_queues_file",
        "api_keys_file",
    )
    @classmethod
    def _file_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value

    @property
    def commands_subscription(self) -> str:
        """The command topic filter, as a shared subscription when a group is set."""
        if self.mqtt_shared_group:
            return f"$share/{self.mqtt_shared_group}/{self.mqtt_commands_topic}"
        return self.mqtt_commands_topic

    @property
    def lease_seconds(self) -> float:
        return self.replica_lease_seconds or float(self.mqtt_keepalive)

    @property
    def mqtt(self) -> BrokerUrl:
        return BrokerUrl(self.mqtt_url, schemes=("mqtt", "mqtts"))

    @property
    def amqp(self) -> BrokerUrl:
        return BrokerUrl(self.amqp_url, schemes=("amqp", "amqps"))

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite file of `DATABASE_URL`, or None for the in-memory store."""
        if self.database_url.startswith("sqlite:///"):
            return Path(self.database_url.removeprefix("sqlite:///"))
        return None

    def queue_map(self) -> QueueMap:
        """The queues of `PRINT_QUEUES_FILE`, or one simulated printer per queueId."""
        if self.print_queues_file is None:
            return QueueMap.dynamic()
        path = self.print_queues_file
        try:
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise QueueConfigError(f"cannot read {path}: {exc.strerror}") from exc
            except UnicodeDecodeError as exc:
                raise QueueConfigError(f"{path} is not valid TOML: not UTF-8 ({exc})") from exc
            return QueueMap.from_toml(text, source=str(path))
        except QueueConfigError as exc:
            raise ConfigError(f"PRINT_QUEUES_FILE: {exc}") from None

    def access_control(self) -> AccessControl | None:
        """The keys' gatekeeper with `API_KEYS` (the keys file is read into it at start), or
        None with `AUTH_DISABLED=true`; a ConfigError when neither or both are set."""
        has_keys = bool(self.api_keys) or self.api_keys_file is not None
        if self.auth_disabled:
            if has_keys:
                raise ConfigError(
                    "AUTH_DISABLED=true, yet API_KEYS or API_KEYS_FILE is set: "
                    "unset AUTH_DISABLED to check the keys, or the keys to run without"
                )
            return None
        if not has_keys:
            raise ConfigError(
                "no API keys: set API_KEYS or API_KEYS_FILE, or AUTH_DISABLED=true to accept "
                "every command without a key (development only)"
            )
        return AccessControl(
            KeyTable.plain(self.api_keys), rate=self.api_key_rate, burst=self.api_key_burst
        )

    @classmethod
    def from_env(cls) -> Settings:
        """Settings from the environment, or a ConfigError naming every bad variable."""
        try:
            return cls()
        except ValidationError as exc:
            lines = [
                f"  {'.'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
                for err in exc.errors(include_url=False)
            ]
            raise ConfigError("invalid configuration:\n" + "\n".join(lines)) from None
