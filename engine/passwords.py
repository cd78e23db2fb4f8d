"""Password hashes: scrypt (RFC 7914) from the standard library.

Stored as ``$scrypt$ln=15,r=8,p=1$<salt b64>$<hash b64>`` so parameters can be
raised later without breaking existing hashes; verification reads them back.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

__all__ = ["hash_password", "verify_password"]

_LN, _R, _P = 15, 8, 1
_DKLEN = 32


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=1 << _LN, r=_R, p=_P, maxmem=256 << 20, dklen=_DKLEN
    )
    return f"$scrypt$ln={_LN},r={_R},p={_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    try:
        _, scheme, params, salt_b64, hash_b64 = stored.split("$")
        if scheme != "scrypt":
            return False
        values = dict(item.split("=", 1) for item in params.split(","))
        ln, r, p = int(values["ln"]), int(values["r"]), int(values["p"])
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
    except (ValueError, KeyError):
        return False
    return hmac.compare_digest(digest, expected)
