"""Password hashes: scrypt (RFC 7914) from the standard library.

Stored as ``$scrypt$ln=15,r=8,p=1$<salt b64>$<hash b64>`` so parameters can be
raised later without breaking existing hashes; verification reads them back.

Imported accounts (``peerctl account import``) keep the hash they had:
SHA-crypt (``$5$``/``$6$``, Dovecot's ``{SHA256-CRYPT}``/``{SHA512-CRYPT}``,
:mod:`engine.shacrypt`) is stored as given and verified as such, until the
first successful login rehashes it (:func:`needs_rehash`). New passwords are
always scrypt.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from engine import shacrypt

__all__ = [
    "DEFAULT_LN",
    "MAX_LN",
    "MAX_P",
    "MAX_R",
    "MIN_LN",
    "hash_password",
    "hash_problem",
    "needs_rehash",
    "scrypt_params",
    "verify_password",
]

# New hashes: N = 2**ln (the node's ``[auth] scrypt_cost``, DEFAULT_LN unless
# set), r = 8 (128 * r * N bytes: 32 MiB at ln=15), p = 1.
DEFAULT_LN, _R, _P = 15, 8, 1
MIN_LN = 4  # the least ``[auth] scrypt_cost`` a node takes
_DKLEN = 32

# The most a stored hash may ask of one verification: ln=16, r=8 is 64 MiB of
# memory (128 * r * 2**ln bytes) and p multiplies the CPU time. A hash beyond
# these is refused when it is given (create an account with a password_hash)
# and never verified, so nobody can make each login arbitrarily expensive.
MAX_LN, MAX_R, MAX_P = 16, 8, 2


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, ln: int = DEFAULT_LN) -> str:
    """A new ``$scrypt$`` hash of ``password`` at N = 2**``ln``."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=1 << ln, r=_R, p=_P, maxmem=256 << 20, dklen=_DKLEN
    )
    return f"$scrypt$ln={ln},r={_R},p={_P}${_b64(salt)}${_b64(digest)}"


def scrypt_params(stored: str) -> tuple[int, int, int] | None:
    """``(ln, r, p)`` of a stored hash, or None unless it is a well-formed
    ``$scrypt$`` hash whose parameters are within :data:`MAX_LN`, :data:`MAX_R`
    and :data:`MAX_P`."""
    try:
        _, scheme, params, salt_b64, hash_b64 = stored.split("$")
        values = dict(item.split("=", 1) for item in params.split(","))
        if scheme != "scrypt" or set(values) != {"ln", "r", "p"}:
            return None
        if not all(v.isascii() and v.isdigit() and len(v) <= 3 for v in values.values()):
            return None
        ln, r, p = int(values["ln"]), int(values["r"]), int(values["p"])
        if not (1 <= ln <= MAX_LN and 1 <= r <= MAX_R and 1 <= p <= MAX_P):
            return None
        if not 16 <= len(_unb64(hash_b64)) <= 64 or not _unb64(salt_b64):
            return None
    except ValueError:
        return None
    return ln, r, p


def hash_problem(stored: str) -> str | None:
    """None if ``stored`` is a hash this node verifies within its bounds, else why not."""
    if stored.startswith("$scrypt$"):
        if scrypt_params(stored) is None:
            # Parameters beyond the node's bounds would make every login of
            # the account as expensive as the caller likes (docs/security.md).
            return (
                "a scrypt hash must be $scrypt$ln=..,r=..,p=..$salt$hash with"
                f" ln <= {MAX_LN}, r <= {MAX_R}, p <= {MAX_P}"
            )
        return None
    if stored.startswith(("$5$", "$6$")):
        if shacrypt.parse(stored) is None:
            return (
                "a SHA-crypt hash must be $5$ or $6$[rounds=N$]salt$hash with"
                f" rounds <= {shacrypt.MAX_ROUNDS}"
            )
        return None
    return "password_hash must be a $scrypt$, $5$ (SHA256-CRYPT) or $6$ (SHA512-CRYPT) hash"


def needs_rehash(stored: str, ln: int = DEFAULT_LN) -> bool:
    """True if ``stored`` is weaker than what :func:`hash_password` makes at ``ln``:
    an imported SHA-crypt hash, or scrypt with smaller parameters. A login
    that proves the password replaces it (``Node.authenticate``); a stronger
    imported scrypt hash is kept."""
    params = scrypt_params(stored)
    if params is None:
        return True
    stored_ln, r, _ = params
    return stored_ln < ln or r < _R


def verify_password(password: str, stored: str) -> bool:
    if stored.startswith(("$5$", "$6$")):
        return shacrypt.verify(password, stored)
    params = scrypt_params(stored)
    if params is None:
        return False
    ln, r, p = params
    try:
        _, _, _, salt_b64, hash_b64 = stored.split("$")
        expected = _unb64(hash_b64)
        digest = hashlib.scrypt(
            password.encode(),
            salt=_unb64(salt_b64),
            n=1 << ln,
            r=r,
            p=p,
            maxmem=256 << 20,
            dklen=len(expected),
        )
    except ValueError:
        return False
    return hmac.compare_digest(digest, expected)
