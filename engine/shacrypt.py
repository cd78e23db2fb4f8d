"""SHA-crypt (``$5$`` SHA-256, ``$6$`` SHA-512): the hashes Dovecot writes as
``{SHA256-CRYPT}`` and ``{SHA512-CRYPT}``, verified so imported accounts keep
their passwords.

How this works: Ulrich Drepper's "Unix crypt using SHA-256 and SHA-512"
specification (the algorithm glibc's ``crypt(3)`` implements), written here
from the specification with :mod:`hashlib`, because the standard library's
``crypt`` module is deprecated (PEP 594, gone in Python 3.13). The numbered
comments are the steps of the specification. ``rounds`` is bounded (the
default is 5,000; :data:`MAX_ROUNDS` caps what an imported hash may ask of
each login).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

__all__ = ["MAX_ROUNDS", "ShaCrypt", "parse", "sha_crypt", "verify"]

DEFAULT_ROUNDS = 5000
MIN_ROUNDS = 1000
# glibc allows 999,999,999; one login of such a hash would take minutes.
MAX_ROUNDS = 500_000

_B64 = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

# The order the digest's bytes are encoded in (the specification's table):
# groups of three bytes, then the leftovers.
_ORDER: dict[str, tuple[list[tuple[int, int, int]], tuple[int, ...]]] = {
    "5": (
        [
            *[(0, 10, 20), (21, 1, 11), (12, 22, 2), (3, 13, 23), (24, 4, 14)],
            *[(15, 25, 5), (6, 16, 26), (27, 7, 17), (18, 28, 8), (9, 19, 29)],
        ],
        (31, 30),
    ),
    "6": (
        [
            *[(0, 21, 42), (22, 43, 1), (44, 2, 23), (3, 24, 45), (25, 46, 4)],
            *[(47, 5, 26), (6, 27, 48), (28, 49, 7), (50, 8, 29), (9, 30, 51)],
            *[(31, 52, 10), (53, 11, 32), (12, 33, 54), (34, 55, 13), (56, 14, 35)],
            *[(15, 36, 57), (37, 58, 16), (59, 17, 38), (18, 39, 60), (40, 61, 19)],
            (62, 20, 41),
        ],
        (63,),
    ),
}

_HASH_LEN = {"5": 43, "6": 86}
_RE = re.compile(r"\A\$([56])\$(?:rounds=(\d{1,9})\$)?([^$:\n]{0,16})\$([./0-9A-Za-z]+)\Z")


@dataclass(frozen=True, slots=True)
class ShaCrypt:
    """A parsed ``$5$``/``$6$`` hash."""

    variant: str  # "5" or "6"
    rounds: int
    rounds_given: bool
    salt: str
    digest: str


def parse(stored: str) -> ShaCrypt | None:
    """The parts of a well-formed hash whose rounds are at most
    :data:`MAX_ROUNDS`; None for anything else."""
    match = _RE.match(stored)
    if match is None:
        return None
    variant, rounds_text, salt, digest = match.groups()
    if len(digest) != _HASH_LEN[variant]:
        return None
    rounds = DEFAULT_ROUNDS if rounds_text is None else int(rounds_text)
    # The specification clamps rounds into [1000, 999999999].
    rounds = max(MIN_ROUNDS, rounds)
    if rounds > MAX_ROUNDS:
        return None
    return ShaCrypt(variant, rounds, rounds_text is not None, salt, digest)


def _encode(digest: bytes, variant: str) -> str:
    groups, tail = _ORDER[variant]
    out: list[str] = []
    for a, b, c in groups:
        value = (digest[a] << 16) | (digest[b] << 8) | digest[c]
        out.extend(_B64[(value >> (6 * i)) & 0x3F] for i in range(4))
    if len(tail) == 2:  # SHA-256: two bytes left, three characters
        value = (digest[tail[0]] << 8) | digest[tail[1]]
        out.extend(_B64[(value >> (6 * i)) & 0x3F] for i in range(3))
    else:  # SHA-512: one byte left, two characters
        value = digest[tail[0]]
        out.extend(_B64[(value >> (6 * i)) & 0x3F] for i in range(2))
    return "".join(out)


def _repeat(block: bytes, length: int) -> bytes:
    """``length`` bytes of ``block`` repeated (steps 16 and 20's byte sequences)."""
    whole, rest = divmod(length, len(block))
    return block * whole + block[:rest]


def sha_crypt(password: bytes, salt: str, rounds: int, variant: str) -> str:
    """The encoded digest (the part after the last ``$``)."""
    new = hashlib.sha256 if variant == "5" else hashlib.sha512
    size = 32 if variant == "5" else 64
    salt_bytes = salt.encode()[:16]
    # Steps 4-8: digest B of password, salt, password.
    b = new(password + salt_bytes + password).digest()
    # Steps 1-3, 9-12: digest A.
    a = new(password + salt_bytes)
    a.update(_repeat(b, len(password)))
    n = len(password)
    while n:
        a.update(b if n & 1 else password)
        n >>= 1
    a_digest = a.digest()
    # Steps 13-16: P, from the password repeated.
    dp = new(password * len(password)).digest()
    p = _repeat(dp, len(password))
    # Steps 17-20: S, from the salt repeated 16 + A[0] times.
    ds = new(salt_bytes * (16 + a_digest[0])).digest()
    s = _repeat(ds, len(salt_bytes))
    # Step 21: the rounds.
    c = a_digest
    for i in range(rounds):
        h = new(p if i & 1 else c)
        if i % 3:
            h.update(s)
        if i % 7:
            h.update(p)
        h.update(c if i & 1 else p)
        c = h.digest()
    assert len(c) == size
    return _encode(c, variant)


def verify(password: str, stored: str) -> bool:
    parsed = parse(stored)
    if parsed is None:
        return False
    digest = sha_crypt(password.encode(), parsed.salt, parsed.rounds, parsed.variant)
    return hmac.compare_digest(digest, parsed.digest)
