"""IMAP SEARCH and UID SEARCH (RFC 3501 6.4.4; RFC 4731 ESEARCH).

How this works: the core compiles the criteria into one predicate over a
record (:func:`~peerd.protocols.imap.search.compile_search`); the handler runs
it over the selected mailbox's records off the event loop (header and body
keys read message bytes) and writes ``* SEARCH`` or ``* ESEARCH``.
:data:`HANDLERS` names it by command class.
"""

from __future__ import annotations

from typing import Final

from peerd.protocols.imap import commands as c
from peerd.protocols.imap.responses import CommandError
from peerd.protocols.imap.search import compile_search, esearch_response, search_response
from peerd.services.imap.session import Handler, Reply, Session

__all__ = ["HANDLERS"]


async def search(session: Session, cmd: c.Search) -> Reply:
    if cmd.return_options is not None and "SAVE" in cmd.return_options:
        raise CommandError("SEARCH RETURN (SAVE) needs SEARCHRES, which is not offered")
    box = session.selected().box
    records = list(box.records)
    matcher = compile_search(cmd.key, len(records), box.largest_uid())
    reader = session.mail.reader

    def run() -> list[int]:
        return [
            record.uid if cmd.uid else seq
            for seq, record in enumerate(records, 1)
            if matcher(seq, record, reader)
        ]

    found = await session.mail.run_blocking(run)
    if cmd.return_options is None:
        await session.send(search_response(found))
    else:
        await session.send(esearch_response(cmd.tag, cmd.uid, cmd.return_options, found))
    # RFC 3501 7.4.1: no EXPUNGE during SEARCH (UID SEARCH may: numbers are UIDs).
    await session.report(cmd)
    return Reply(f"{'UID ' if cmd.uid else ''}SEARCH completed")


HANDLERS: Final[dict[type[c.Command], Handler]] = {c.Search: search}
