"""The files ``peerctl account import`` reads: CSV and Dovecot passwd-files.

How this works: :func:`parse` takes the file's text and gives back one
:class:`Entry` per account, or the :class:`LineError` of every line it
cannot take (the command then sends nothing). No I/O here.

- **CSV**: ``name,password_or_hash,quota`` per line (a first line
  ``name,...`` is a header; ``quota`` may be empty, bytes or a size like
  ``50M``). The second field is a plain password, a ``{SCHEME}`` string as
  Dovecot writes them, or a bare ``$scrypt$``/``$5$``/``$6$`` hash.
- **passwd-file** (Dovecot's ``passwd-file`` driver):
  ``user:{SCHEME}hash:uid:gid:gecos:home:shell:extra`` — only the first
  two fields matter; a quota is read from ``userdb_quota_rule=*:storage=SIZE``
  in the extra fields.

Schemes: ``{SHA512-CRYPT}`` and ``{SHA256-CRYPT}`` keep their hash (the node
verifies SHA-crypt); ``{PLAIN}`` (and ``{CLEAR}``, Dovecot's other name for
it) is a password the node hashes; a bare ``$6$``/``$5$`` is what Dovecot's
default ``{CRYPT}`` holds. Every other scheme is refused by name, its line
with it: ``{BLF-CRYPT}`` needs bcrypt, which peerd does not ship, and the
rest are weak or not verifiable here; such users set a new password.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass

from peerd.node.config import parse_size

__all__ = ["FORMATS", "Entry", "LineError", "parse"]

FORMATS = ("auto", "csv", "passwd")

_SCHEME = re.compile(r"\A\{([A-Za-z0-9.-]+)\}(.*)\Z", re.S)
_QUOTA_RULE = re.compile(r"(?:\A|\s)(?:userdb_)?quota_rule=\*:(?:storage|bytes)=(\S+)")
_KEPT: dict[str, tuple[str, ...]] = {
    "SHA512-CRYPT": ("$6$",),
    "SHA256-CRYPT": ("$5$",),
    "CRYPT": ("$5$", "$6$"),
}
_WHY_NOT = {
    "BLF-CRYPT": "needs bcrypt, which peerd does not ship",
    "ARGON2I": "is not verifiable here",
    "ARGON2ID": "is not verifiable here",
    "PBKDF2": "is not verifiable here",
}


@dataclass(frozen=True, slots=True)
class Entry:
    """One account to create: exactly one of ``password`` and ``password_hash``."""

    line: int
    name: str
    password: str | None
    password_hash: str | None
    quota_limit: int | None


@dataclass(frozen=True, slots=True)
class LineError:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


def _secret(line: int, value: str) -> tuple[str | None, str | None] | LineError:
    """(password, password_hash) of a CSV or passwd-file password field."""
    scheme = _SCHEME.match(value)
    if scheme is None:
        if value.startswith(("$scrypt$", "$5$", "$6$")):
            return None, value
        if value.startswith("$"):
            return LineError(line, f"the hash {value[:4]}... is not one peerd verifies")
        return value, None
    name, rest = scheme.group(1).upper(), scheme.group(2)
    if name in ("PLAIN", "CLEAR"):
        return rest, None
    kept = _KEPT.get(name)
    if kept is not None:
        if not rest.startswith(kept):
            return LineError(line, f"{{{name}}} with a hash that is not SHA-crypt ($5$ or $6$)")
        return None, rest
    why = _WHY_NOT.get(name, "is not supported (only SHA512-CRYPT, SHA256-CRYPT and PLAIN)")
    return LineError(line, f"password scheme {{{name}}} {why}; give this user a new password")


def _quota(line: int, value: str) -> int | LineError | None:
    value = value.strip()
    if value in ("", "none", "unlimited", "0"):
        return None
    try:
        return parse_size(value)
    except ValueError:
        return LineError(line, f"quota {value!r} is not a size (bytes or e.g. 50M)")


def _entry(line: int, name: str, secret: str, quota: str) -> Entry | LineError:
    if not name:
        return LineError(line, "no account name")
    if not secret:
        return LineError(line, f"no password for {name}")
    got = _secret(line, secret)
    if isinstance(got, LineError):
        return got
    limit = _quota(line, quota)
    if isinstance(limit, LineError):
        return limit
    return Entry(line, name, got[0], got[1], limit)


def _csv(text: str) -> list[Entry | LineError]:
    out: list[Entry | LineError] = []
    reader = csv.reader(io.StringIO(text))
    for fields in reader:
        line = reader.line_num
        if not fields or not "".join(fields).strip() or fields[0].startswith("#"):
            continue
        if line == 1 and fields[0].strip().lower() in ("name", "user", "account"):
            continue  # a header
        if len(fields) not in (2, 3):
            out.append(
                LineError(line, f"expected name,password_or_hash[,quota]: {len(fields)} fields")
            )
            continue
        quota = fields[2] if len(fields) == 3 else ""
        out.append(_entry(line, fields[0].strip(), fields[1], quota))
    return out


def _passwd(text: str) -> list[Entry | LineError]:
    out: list[Entry | LineError] = []
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        fields = raw.split(":")
        if len(fields) < 2:
            out.append(
                LineError(number, "expected user:{SCHEME}hash[:uid:gid:gecos:home:shell:extra]")
            )
            continue
        # The password field may itself hold no colon (SHA-crypt and PLAIN
        # written by doveadm do not), so the split is safe.
        extra = ":".join(fields[7:]) if len(fields) > 7 else ""
        quota = _QUOTA_RULE.search(extra)
        out.append(_entry(number, fields[0].strip(), fields[1], quota.group(1) if quota else ""))
    return out


def _looks_like_passwd(text: str) -> bool:
    for raw in text.splitlines():
        if raw.strip() and not raw.lstrip().startswith("#"):
            user, colon, rest = raw.partition(":")
            return bool(colon) and "," not in user and rest.startswith(("{", "$"))
    return False


def parse(text: str, form: str = "auto") -> tuple[list[Entry], list[LineError]]:
    """The accounts in ``text`` (``form``: csv, passwd, or auto: a first line
    ``user:{...`` or ``user:$...`` is a passwd-file), and the lines refused."""
    if form not in FORMATS:
        raise ValueError(f"unknown format {form!r}")
    if form == "auto":
        form = "passwd" if _looks_like_passwd(text) else "csv"
    items = _passwd(text) if form == "passwd" else _csv(text)
    entries = [i for i in items if isinstance(i, Entry)]
    errors = [i for i in items if isinstance(i, LineError)]
    seen: dict[str, int] = {}
    for entry in entries:
        first = seen.setdefault(entry.name, entry.line)
        if first != entry.line:
            errors.append(LineError(entry.line, f"{entry.name} is also on line {first}"))
    return entries, sorted(errors, key=lambda e: e.line)
