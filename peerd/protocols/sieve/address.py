"""Addresses out of a header field, and their parts (RFC 5228 section 2.7.4, RFC 5233).

How this works: :func:`addresses` reads an RFC 5322 section 3.4
address-list in one pass over its characters, with a counter for nested
comments instead of recursion: the standard library's parser recurses once
per ``(`` and a header of a few thousand ``(`` overflows the stack. Quoted
strings, comments, ``<angle-addr>`` (a source route before ``:`` dropped),
groups (``name: a, b;``) and bare addr-specs are understood; what cannot be
an address yields nothing rather than an error, as a filter must go on.

:func:`part` cuts an address as the ``:localpart``, ``:domain``, ``:user``
and ``:detail`` tags ask; the local part ends at the last ``@``.
"""

from __future__ import annotations

from typing import Final

__all__ = ["DETAIL_SEPARATOR", "addresses", "part"]

# RFC 5233 section 4 leaves the separator to the site; "+" is what peerd's
# LMTP uses for local+detail@domain.
DETAIL_SEPARATOR: Final = "+"


def _finish(element: list[str], angle: str | None, out: list[str]) -> None:
    if angle is not None:
        # RFC 5322 section 4.4 obs-route: "<@a,@b:user@host>".
        address = angle.rpartition(":")[2] if angle.startswith("@") else angle
    else:
        address = "".join(element)
    address = "".join(address.split())
    if address:
        out.append(address)


def addresses(raw: str) -> list[str]:
    """The addr-specs in an address-list header value, in order."""
    out: list[str] = []
    element: list[str] = []  # characters outside comments, quotes kept
    angle: str | None = None
    angle_chars: list[str] = []
    in_angle = False
    depth = 0  # comment nesting
    quoted = False
    escaped = False
    for char in raw:
        if escaped:
            (angle_chars if in_angle else element).append(char)
            escaped = False
            continue
        if char == "\\" and (quoted or depth):
            escaped = True
            if quoted:
                (angle_chars if in_angle else element).append(char)
            continue
        if depth:
            if char == "(":
                depth += 1
            elif char == ")":
                depth -= 1
            continue
        if quoted:
            (angle_chars if in_angle else element).append(char)
            if char == '"':
                quoted = False
            continue
        if char == '"':
            quoted = True
            (angle_chars if in_angle else element).append(char)
        elif char == "(":
            depth = 1
        elif in_angle:
            if char == ">":
                in_angle = False
                angle = "".join(angle_chars)
                angle_chars = []
            else:
                angle_chars.append(char)
        elif char == "<":
            in_angle = True
            angle_chars = []
        elif char == ":":
            # A group's display name ends here: what came before is no address.
            element = []
            angle = None
        elif char in ",;":
            _finish(element, angle, out)
            element, angle = [], None
        else:
            element.append(char)
    if not in_angle:
        _finish(element, angle, out)
    return out


def part(address: str, which: str) -> str | None:
    """``all``, ``localpart``, ``domain``, ``user`` or ``detail`` of an address.

    None when the address has no such part: a ``:detail`` test on an
    address without the separator does not match (RFC 5233 section 4).
    An address without "@" is all local part (RFC 5228 section 2.7.4 leaves
    that case open; the null sender "" is one).
    """
    if which == "all":
        return address
    local, at, domain = address.rpartition("@")
    if not at:
        local, domain = address, ""
    if which == "localpart":
        return local
    if which == "domain":
        return domain
    user, separator, detail = local.partition(DETAIL_SEPARATOR)
    if which == "user":
        return user
    return detail if separator else None
