"""What a command builder reads its arguments through, as a protocol.

How this works: the grammar (:mod:`~peerd.protocols.imap.grammar`) reads
each command's tokens with a cursor; the builders of the extension modules
(:mod:`~peerd.protocols.imap.acl`, :mod:`~peerd.protocols.imap.quota`,
:mod:`~peerd.protocols.imap.metadata`) take that cursor typed as
:class:`Args`, so they need not import the grammar that imports them.
"""

from __future__ import annotations

from typing import Protocol

from peerd.protocols.imap.tokens import Token

__all__ = ["Args"]


class Args(Protocol):
    """A cursor over a command's argument tokens (the grammar's ``_Args``)."""

    name: str

    def more(self) -> bool: ...

    def peek(self) -> Token | None: ...

    def next(self, what: str) -> Token: ...

    def end(self) -> None: ...

    def atom(self, what: str) -> str: ...

    def astring(self, what: str) -> bytes: ...

    def text(self, what: str) -> str: ...

    def mailbox(self, what: str = "mailbox name") -> str: ...

    def list(self, what: str) -> tuple[Token, ...]: ...
