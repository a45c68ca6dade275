"""Release PINs: a hash verifies the PIN it was made from and nothing else, and a damaged
or tampered hash releases nothing (and costs no more than a normal check)."""

from __future__ import annotations

from typing import Final

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.core.pins import SALT_BYTES, hash_pin, verify_pin

SALT: Final = bytes(range(SALT_BYTES))
STORED: Final = hash_pin("1234", salt=SALT)

# scrypt is slow on purpose: few examples, each still a real hash.
pins = st.text(min_size=1, max_size=64)


@settings(max_examples=10, deadline=None)
@given(pin=pins, other=pins)
def test_a_hash_verifies_its_pin_only(pin: str, other: str):
    stored = hash_pin(pin, salt=SALT)
    assert verify_pin(pin, stored)
    assert verify_pin(other, stored) is (other == pin)
    assert stored.startswith("scrypt$")


def test_the_salt_makes_equal_pins_look_different():
    assert hash_pin("1234", salt=SALT) != hash_pin("1234", salt=bytes(reversed(SALT)))
    with pytest.raises(ValueError, match="salt"):
        hash_pin("1234", salt=b"short")


def test_lone_surrogates_hash_too():
    stored = hash_pin("\ud800", salt=SALT)
    assert verify_pin("\ud800", stored)
    assert not verify_pin("\ud801", stored)


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "plain",
        STORED.replace("scrypt", "md5"),
        STORED.replace("$16384$", "$1048576$"),  # a cost that would take a gigabyte
        STORED.replace("$8$", "$x$"),
        STORED + "$more",
        STORED[:-4] + "!!!!",
        "scrypt$16384$8$1$$",
    ],
)
def test_a_damaged_hash_releases_nothing(stored: str):
    assert verify_pin("1234", stored) is False


@settings(max_examples=200, deadline=None)
@given(stored=st.text(max_size=200))
def test_any_stored_text_is_judged_without_raising(stored: str):
    assert verify_pin("1234", stored) in (True, False)
