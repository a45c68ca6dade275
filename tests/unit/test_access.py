"""API keys, their scopes, queues and rates (service/core/access.py), and the settings that
make the service refuse to start without them."""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path
from typing import Final

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.config import ConfigError, Settings
from service.core.access import (
    AccessConfigError,
    AccessControl,
    ApiKey,
    Forbidden,
    KeyTable,
    RateLimited,
    Scope,
    TokenBucket,
    Unauthorized,
    digest_of,
)
from service.models import MessageType

WRITER_KEY: Final = secrets.token_urlsafe(24)
READER_KEY: Final = secrets.token_urlsafe(24)

CREATE: Final = MessageType.createPrintJob
CANCEL: Final = MessageType.cancelPrintJob
UPDATE: Final = MessageType.updatePrintJob
STATUS: Final = MessageType.getPrintJobStatus
COUNTS: Final = MessageType.getPrintCounts


def sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


KEYS_FILE: Final = f"""
[keys.acme-writer]
sha256 = "{sha256(WRITER_KEY)}"
queues = ["acme-*", "shared"]
scopes = ["write:job"]
rate = 2
burst = 3

[keys.acme-reader]
sha256 = "{sha256(READER_KEY).upper()}"
queues = ["acme-?"]
scopes = ["read:job"]
"""


def a_control(*, rate: float = 0.0, burst: int = 1) -> AccessControl:
    return AccessControl(KeyTable.from_toml(KEYS_FILE, source="keys.toml"), rate=rate, burst=burst)


# --- the file --------------------------------------------------------------------------------


def test_the_file_names_each_key_with_its_queues_scopes_and_rate() -> None:
    table = KeyTable.from_toml(KEYS_FILE, source="keys.toml")

    writer, reader = table.keys
    assert (writer.name, writer.queues, writer.scopes) == (
        "acme-writer",
        ("acme-*", "shared"),
        frozenset({Scope.write_job}),
    )
    assert (writer.rate, writer.burst) == (2, 3)
    assert writer.digest == digest_of(WRITER_KEY)
    assert reader.digest == digest_of(READER_KEY)  # an upper-case digest is the same digest
    assert (reader.rate, reader.burst) == (None, None)


def test_an_empty_file_is_no_key() -> None:
    assert len(KeyTable.from_toml("", source="keys.toml")) == 0


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("keys = [", "not valid TOML"),
        ('[keys.a]\nsha256 = "00"\nqueues = ["q"]\nscopes = ["read:job"]', "keys.a.sha256"),
        (f'[keys.a]\nsha256 = "{"0" * 64}"\nqueues = []\nscopes = ["read:job"]', "keys.a.queues"),
        (f'[keys.a]\nsha256 = "{"0" * 64}"\nqueues = ["q"]\nscopes = []', "keys.a.scopes"),
        (f'[keys.a]\nsha256 = "{"0" * 64}"\nqueues = ["q"]\nscopes = ["admin"]', "keys.a.scopes"),
        (f'[keys.a]\nsha256 = "{"0" * 64}"\nqueues = ["q/1"]\nscopes = ["read:job"]', "queues"),
        (f'[keys.a]\nsha256 = "{"0" * 64}"\nqueues = ["[ab]"]\nscopes = ["read:job"]', "queues"),
        (
            f'[keys.a]\nsha256 = "{"0" * 64}"\nqueues = ["q"]\nscopes = ["read:job"]\nrate = -1',
            "keys.a.rate",
        ),
        (
            f'[keys.a]\nsha256 = "{"0" * 64}"\nqueues = ["q"]\nscopes = ["read:job"]\nburst = 0',
            "keys.a.burst",
        ),
        (f'[keys.a]\nsha256 = "{"0" * 64}"\nqueues = ["q"]\nscope = ["read:job"]', "keys.a.scope"),
        ('[key.a]\nsha256 = "x"', "key"),
        (
            f'[keys.a]\nsha256 = "{"0" * 64}"\nqueues = ["q"]\nscopes = ["read:job"]\n'
            f'[keys.b]\nsha256 = "{"0" * 64}"\nqueues = ["q"]\nscopes = ["read:job"]',
            "'a' and 'b' are the same key",
        ),
    ],
    ids=[
        "not-toml",
        "short-digest",
        "no-queue",
        "no-scope",
        "unknown-scope",
        "bad-pattern",
        "brackets",
        "negative-rate",
        "zero-burst",
        "unknown-field",
        "unknown-table",
        "same-digest",
    ],
)
def test_a_bad_file_is_refused_saying_where(text: str, says: str) -> None:
    with pytest.raises(AccessConfigError) as raised:
        KeyTable.from_toml(text, source="keys.toml")
    assert says in str(raised.value)


def test_an_error_never_echoes_what_the_file_holds() -> None:
    # An operator who put a key where its digest goes must not find it in the log.
    text = f'[keys.a]\nsha256 = "{WRITER_KEY}"\nqueues = ["q"]\nscopes = ["read:job"]'
    with pytest.raises(AccessConfigError) as raised:
        KeyTable.from_toml(text, source="keys.toml")
    assert WRITER_KEY not in str(raised.value)


TOMLISH = st.one_of(
    st.text(max_size=300),
    st.lists(
        st.sampled_from(
            [
                "[keys.a]\n",
                "[keys.b]\n",
                "[[keys]]\n",
                f'sha256 = "{"a" * 64}"\n',
                'sha256 = "zz"\n',
                'queues = ["q-*", "?"]\n',
                "queues = [1, 2]\n",
                'queues = "q"\n',
                'scopes = ["read:job", "write:job"]\n',
                'scopes = ["root"]\n',
                "rate = 1e400\n",
                "rate = nan\n",
                "burst = 10000000000000\n",
                "burst = 1.5\n",
                "keys = 3\n",
                "[" * 50,
                "x = " + "[" * 2000 + "]" * 2000 + "\n",
                '"\\ud800" = 1\n',
                "\x00",
            ]
        ),
        max_size=12,
    ).map("".join),
)


@given(TOMLISH)
def test_any_input_is_keys_or_a_config_error(text: str) -> None:
    try:
        table = KeyTable.from_toml(text, source="keys.toml")
    except AccessConfigError:
        return
    for key in table.keys:
        assert len(key.digest) == 32
        assert key.scopes
        assert key.queues


@given(st.text(min_size=1, max_size=40), st.sampled_from(list(MessageType)))
def test_any_other_key_is_unauthorized(presented: str, message_type: MessageType) -> None:
    control = a_control()
    verdict = control.verdict(presented, "acme-1", message_type, now=0.0)
    if presented in (WRITER_KEY, READER_KEY):
        assert not isinstance(verdict, Unauthorized)
    else:
        assert verdict == Unauthorized("x-api-key is not valid")


@given(st.binary(max_size=64))
def test_any_key_bytes_are_unauthorized(data: bytes) -> None:
    # What MQTT may carry: any bytes, decoded with replacement or as surrogates.
    control = a_control()
    for presented in (data.decode("utf-8", "replace"), data.decode("utf-8", "surrogateescape")):
        assert isinstance(control.authenticate(presented), Unauthorized)


@pytest.mark.parametrize("presented", [None, 42, b"bytes", ["k"]], ids=repr)
def test_no_key_or_one_that_is_no_text_is_unauthorized(presented: object) -> None:
    verdict = a_control().authenticate(presented)
    assert isinstance(verdict, Unauthorized)
    assert verdict.message == (
        "x-api-key is missing" if presented is None else "x-api-key is not valid"
    )


# --- the verdicts ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "queue", "message_type", "allowed"),
    [
        (WRITER_KEY, "acme-1", CREATE, True),
        (WRITER_KEY, "acme-printers", CANCEL, True),
        (WRITER_KEY, "shared", UPDATE, True),
        (WRITER_KEY, "acme-1", STATUS, False),  # no read:job
        (WRITER_KEY, "acme-1", COUNTS, False),
        (WRITER_KEY, "globex-1", CREATE, False),  # not its queue
        (WRITER_KEY, "shared-2", CREATE, False),  # a pattern matches the whole queueId
        (WRITER_KEY, "xacme-1", CREATE, False),
        (READER_KEY, "acme-1", STATUS, True),
        (READER_KEY, "acme-2", COUNTS, True),
        (READER_KEY, "acme-12", STATUS, False),  # `?` is one character
        (READER_KEY, "acme-1", CREATE, False),  # no write:job
        (READER_KEY, "acme-1", CANCEL, False),
        (READER_KEY, "acme-1", UPDATE, False),
    ],
)
def test_each_scope_and_queue_rule(
    key: str, queue: str, message_type: MessageType, allowed: bool
) -> None:
    verdict = a_control().verdict(key, queue, message_type, now=0.0)
    if allowed:
        assert isinstance(verdict, ApiKey)
        assert verdict.name == ("acme-writer" if key == WRITER_KEY else "acme-reader")
    else:
        assert isinstance(verdict, Forbidden)
        assert key not in verdict.message


def test_plain_keys_may_do_everything_everywhere() -> None:
    control = AccessControl.plain([WRITER_KEY, READER_KEY])

    for message_type in MessageType:
        verdict = control.verdict(READER_KEY, "any-queue", message_type, now=0.0)
        assert isinstance(verdict, ApiKey)
        assert verdict.name == "API_KEYS[2]"
    assert isinstance(control.verdict("other", "q", CREATE, now=0.0), Unauthorized)


def test_a_plain_key_and_a_file_key_cannot_be_the_same() -> None:
    with pytest.raises(AccessConfigError, match="same key"):
        KeyTable.plain([WRITER_KEY]).merged(KeyTable.from_toml(KEYS_FILE, source="keys.toml"))


# --- the rate --------------------------------------------------------------------------------


def test_a_bucket_takes_a_burst_then_one_a_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3)

    assert [bucket.take(10.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(10.0) == pytest.approx(0.5)
    assert bucket.take(10.25) == pytest.approx(0.25)
    assert bucket.take(10.5) == 0.0
    # A long quiet spell refills up to the burst, never beyond.
    assert [bucket.take(1000.0) for _ in range(4)][-1] > 0


def test_a_clock_that_goes_back_refills_nothing_and_blocks_nothing() -> None:
    bucket = TokenBucket(rate=1.0, burst=1)
    assert bucket.take(100.0) == 0.0
    assert bucket.take(50.0) == pytest.approx(1.0)  # back 50 s: no refill, no 50 s penalty
    assert bucket.take(51.0) == 0.0


@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=30))
def test_a_bucket_never_waits_negative_or_forever(times: list[float]) -> None:
    bucket = TokenBucket(rate=4.0, burst=2)
    for now in times:
        wait = bucket.take(now)
        assert 0.0 <= wait <= 1 / 4.0


def test_a_key_over_its_rate_is_limited_and_others_are_not() -> None:
    control = a_control(rate=1000.0, burst=1000)

    verdicts = [control.verdict(WRITER_KEY, "acme-1", CREATE, now=5.0) for _ in range(4)]
    assert all(isinstance(v, ApiKey) for v in verdicts[:3])  # its own burst: 3
    limited = verdicts[3]
    assert isinstance(limited, RateLimited)
    assert limited.retry_after == 0.5
    assert "retry after 0.5 s" in limited.message
    # The reader has its own bucket (the defaults), untouched by the writer's.
    assert isinstance(control.verdict(READER_KEY, "acme-1", STATUS, now=5.0), ApiKey)


def test_a_rate_of_zero_is_no_limit() -> None:
    control = AccessControl.plain([WRITER_KEY], rate=0.0, burst=1)
    assert all(control.admit(_only(control), now=0.0) is None for _ in range(1000))


def test_a_reload_keeps_a_bucket_whose_limit_is_unchanged() -> None:
    control = a_control(rate=1.0, burst=1)
    writer = _named(control, "acme-writer")
    for _ in range(3):
        control.admit(writer, now=0.0)
    assert control.admit(writer, now=0.0) is not None

    control.replace(KeyTable.from_toml(KEYS_FILE, source="keys.toml"))
    assert control.admit(_named(control, "acme-writer"), now=0.0) is not None  # no fresh burst

    control.replace(KeyTable.from_toml(KEYS_FILE.replace("burst = 3", "burst = 5"), source="k"))
    assert control.admit(_named(control, "acme-writer"), now=0.0) is None  # a new limit


def test_a_reload_revokes_a_removed_key() -> None:
    control = a_control()
    control.replace(KeyTable.from_toml(KEYS_FILE.split("[keys.acme-reader]")[0], source="k"))
    assert isinstance(control.authenticate(READER_KEY), Unauthorized)
    assert isinstance(control.authenticate(WRITER_KEY), ApiKey)


def _only(control: AccessControl) -> ApiKey:
    (key,) = control.table.keys
    return key


def _named(control: AccessControl, name: str) -> ApiKey:
    return next(k for k in control.table.keys if k.name == name)


# --- fail closed -----------------------------------------------------------------------------


def test_without_keys_the_service_is_not_configured() -> None:
    with pytest.raises(ConfigError, match="AUTH_DISABLED=true"):
        Settings().access_control()


def test_auth_disabled_explicitly_is_no_gatekeeper() -> None:
    assert Settings(auth_disabled=True).access_control() is None


def test_auth_disabled_with_keys_is_a_contradiction() -> None:
    with pytest.raises(ConfigError, match="unset AUTH_DISABLED"):
        Settings(auth_disabled=True, api_keys=(WRITER_KEY,)).access_control()


def test_plain_keys_keep_their_order_and_the_default_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_KEYS", f" {WRITER_KEY}, ,{READER_KEY},{WRITER_KEY}")
    settings = Settings.from_env()
    assert settings.api_keys == (WRITER_KEY, READER_KEY)
    control = settings.access_control()
    assert control is not None
    assert [k.name for k in control.table.keys] == ["API_KEYS[1]", "API_KEYS[2]"]
    key = _named(control, "API_KEYS[1]")
    limited = [control.admit(key, now=0.0) for _ in range(settings.api_key_burst + 1)]
    assert limited[-1] is not None
    assert limited[:-1] == [None] * settings.api_key_burst


def test_a_keys_file_that_does_not_exist_is_a_bad_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="API_KEYS_FILE"):
        _from_env(API_KEYS_FILE=str(tmp_path / "missing.toml"))


def _from_env(**env: str) -> Settings:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        return Settings.from_env()


def test_job_ids_default_to_any_and_can_be_narrowed() -> None:
    table = KeyTable.from_toml(
        f"""
[keys.open]
sha256 = "{sha256("k1")}"
queues = ["*"]
scopes = ["write:job"]

[keys.tenant]
sha256 = "{sha256("k2")}"
queues = ["acme.*"]
scopes = ["write:job"]
job_ids = ["acme.*", "acme-legacy-?"]
""",
        source="keys",
    )
    control = AccessControl(table, rate=0.0, burst=1)
    open_key, tenant = _named(control, "open"), _named(control, "tenant")
    assert control.may_create(open_key, "anything at all") is None
    assert control.may_create(tenant, "acme.1") is None
    assert control.may_create(tenant, "acme-legacy-1") is None
    refused = control.may_create(tenant, "globex.1")
    assert refused is not None
    assert "acme.*" in refused.message
