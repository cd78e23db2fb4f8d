"""What IMAP reads of a message, parsed once from its bytes (issues 10 and 16).

How this works: :func:`parse_message` gives, for one message, the RFC 5256
sort record (:func:`peerd.protocols.imap.sort.build_record`, in its JSON
form) and the rendered ENVELOPE, BODYSTRUCTURE and BODY (RFC 3501 7.4.2,
:func:`structures`). The daemon stores them per GUID when a message is
stored (``engine.parsed``), and SORT, THREAD and FETCH read them back instead
of the bytes: the stored forms are exactly what this module renders, so an
answer is the same whether it came from a stored row or from the bytes.

:data:`PARSE_VERSION` names this parser: change it whenever the sort record
or the rendering of a structure changes, and rows of the old version are
parsed again.

Pure: no I/O, nothing of the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from peerd.protocols.imap import structure
from peerd.protocols.imap.sort import RECORD_VERSION, build_record

__all__ = ["PARSE_VERSION", "Parsed", "Structure", "parse_message", "structures"]

# The rendering of structures. 2: a part that starts with an empty line has
# an empty header (BODY[1] of "--b CRLF CRLF one CRLF CRLF two" was "two");
# nesting past the caps is a text/plain leaf.
STRUCTURE_VERSION: Final = 2
PARSE_VERSION: Final = 100 * STRUCTURE_VERSION + RECORD_VERSION

Structure = tuple[bytes, bytes, bytes]
"""ENVELOPE, BODYSTRUCTURE and BODY, rendered."""


def structures(raw: bytes) -> Structure:
    """ENVELOPE, BODYSTRUCTURE (extended) and BODY (not) of a message."""
    part = structure.parse(raw)
    return (
        structure.envelope(part),
        structure.bodystructure(part, True),
        structure.bodystructure(part, False),
    )


@dataclass(frozen=True, slots=True)
class Parsed:
    """One message's stored forms: ``sortkeys`` is
    :meth:`~peerd.protocols.imap.sort.SortRecord.dumps`."""

    sortkeys: bytes
    envelope: bytes
    bodystructure: bytes
    body: bytes


def parse_message(raw: bytes) -> Parsed:
    """Everything SORT, THREAD and FETCH's structures read of ``raw``."""
    envelope, bodystructure, body = structures(raw)
    return Parsed(build_record(raw).dumps(), envelope, bodystructure, body)
