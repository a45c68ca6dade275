"""Release PINs, kept only as salted scrypt hashes.

A PIN is short (a few digits, often), so no hash makes it strong against someone holding
the store: the attempt limit is what protects a held job. The hash keeps the PIN out of
the database, backups and logs, and the salt makes two jobs with the same PIN look
different. scrypt is in the standard library; its cost is kept moderate because the
handler computes it for every create and release that carries a PIN (in a thread, off the
event loop).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Final

__all__ = ["SALT_BYTES", "hash_pin", "verify_pin"]

SALT_BYTES: Final = 16
_N: Final = 2**14
_R: Final = 8
_P: Final = 1
_LENGTH: Final = 32
_SCHEME: Final = "scrypt"


def hash_pin(pin: str, *, salt: bytes) -> str:
    """`scrypt$N$r$p$salt$hash` (base64 without padding): all a later check needs."""
    if len(salt) < SALT_BYTES:
        raise ValueError(f"a salt of at least {SALT_BYTES} bytes is needed")
    digest = _scrypt(pin, salt, n=_N, r=_R, p=_P)
    return "$".join((_SCHEME, str(_N), str(_R), str(_P), _b64(salt), _b64(digest)))


def verify_pin(pin: str, stored: str) -> bool:
    """Whether `pin` is the one `stored` was made from; False for anything malformed (a
    stored value is ours, but a damaged one must not release a job)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != _SCHEME:
            return False
        # The parameters are read back, but bounded: a tampered row must not make one
        # check cost gigabytes of memory.
        cost = (int(n), int(r), int(p))
        if not (2 <= cost[0] <= 2**16 and 1 <= cost[1] <= 16 and 1 <= cost[2] <= 4):
            return False
        expected = _unb64(digest)
        actual = _scrypt(pin, _unb64(salt), n=cost[0], r=cost[1], p=cost[2])
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)


def _scrypt(pin: str, salt: bytes, *, n: int, r: int, p: int) -> bytes:
    # surrogatepass: any str hashes, even one JSON smuggled a lone surrogate into.
    secret = pin.encode("utf-8", "surrogatepass")
    return hashlib.scrypt(secret, salt=salt, n=n, r=r, p=p, maxmem=2**26, dklen=_LENGTH)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
