"""IMAP SEARCH, SORT and THREAD, and their UID forms (RFC 3501 6.4.4; RFC 4731
ESEARCH; RFC 5256 SORT and THREAD).

How this works: the core compiles the criteria into one predicate over a
record (:func:`~peerd.protocols.imap.search.compile_search`), its BODY and
TEXT keys answered by the full-text index (:mod:`engine.textindex`: one read
before the search; messages not indexed yet are decoded, so the answer is the
same either way); the handler runs
it over the selected mailbox's records off the event loop (header and body
keys read message bytes) and writes ``* SEARCH`` or ``* ESEARCH``. SORT and
THREAD run the same search, then, still off the event loop, pair each message
found with its sort record (the server's
:class:`~peerd.protocols.imap.sort.RecordCache`, filled from the keys the
store keeps from when the message was stored, :mod:`engine.parsed`; a
message not parsed yet is read and parsed once) and order it (:func:`~peerd.protocols.imap.sort.sort`) or thread
it (:func:`~peerd.protocols.imap.thread.thread_response`).
:data:`HANDLERS` names them by command class.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from peerd.protocols.imap import commands as c
from peerd.protocols.imap.records import Record
from peerd.protocols.imap.search import (
    TextSearch,
    compile_search,
    esearch_response,
    esort_response,
    saved_result,
    search_response,
    sort_response,
    text_questions,
)
from peerd.protocols.imap.searchkey import All, SearchKey, uses_modseq
from peerd.protocols.imap.sort import NO_RECORD, SortItem, loads_joined, needs_records, sort
from peerd.protocols.imap.thread import thread_response
from peerd.services.imap.session import Handler, Reply, Session

__all__ = ["HANDLERS"]


async def search(session: Session, cmd: c.Search) -> Reply:
    box = session.selected().box
    saving = cmd.return_options is not None and "SAVE" in cmd.return_options
    if saving:
        # RFC 5182 2.1: a SEARCH (SAVE) that fails leaves "$" empty.
        previous, box.saved = box.saved, frozenset()
    await session.admit_condstore(cmd)
    records = list(box.records)
    matcher = compile_search(
        cmd.key,
        len(records),
        box.largest_uid(),
        await _texts(session, cmd.key),
        saved=previous if saving else box.saved,
    )
    reader = session.selected().mail.reader

    def run() -> list[tuple[int, int]]:
        return [
            (seq, record.uid)
            for seq, record in enumerate(records, 1)
            if matcher(seq, record, reader)
        ]

    hits = await session.mail.run_blocking(run)
    found = [uid if cmd.uid else seq for seq, uid in hits]
    if saving:
        box.saved = saved_result(cmd.return_options or (), [uid for _, uid in hits], cmd.partial)
    modseqs = None
    if uses_modseq(cmd.key):
        # RFC 7162 3.1.5: the highest mod-sequence of what was found.
        modseqs = {
            record.uid if cmd.uid else seq: record.modseq for seq, record in enumerate(records, 1)
        }
    if cmd.return_options is None:
        await session.send(search_response(found, modseqs))
    elif cmd.return_options != ("SAVE",):
        # RFC 5182 2.1: SAVE alone gets no ESEARCH response.
        options = tuple(o for o in cmd.return_options if o != "SAVE")
        await session.send(esearch_response(cmd.tag, cmd.uid, options, found, modseqs, cmd.partial))
    # RFC 3501 7.4.1: no EXPUNGE during SEARCH (UID SEARCH may: numbers are UIDs).
    await session.report(cmd)
    return Reply(f"{'UID ' if cmd.uid else ''}SEARCH completed")


async def _texts(session: Session, key: SearchKey) -> TextSearch | None:
    """The full-text index's answers to ``key``'s BODY and TEXT keys (None
    when it has none): one read for all of them, before the search runs."""
    questions = list(text_questions(key))
    if not questions:
        return None
    found = await session.selected().mail.text_search(session.selected().mailbox_id, questions)
    return found.test


async def _found(
    session: Session, key: SearchKey, uid: bool, with_records: bool = True
) -> Callable[[], list[SortItem]]:
    """A function, for a thread, that searches the selected mailbox and gives
    each message found as a :class:`SortItem` in mailbox order. Without
    ``with_records`` (a SORT by ARRIVAL and SIZE alone) the items carry
    :data:`~peerd.protocols.imap.sort.NO_RECORD`, so no message's sort
    record is read or parsed for it, and they are not kept for the next
    SORT or THREAD of the view."""
    box = session.selected().box
    shown = box.records
    everything = isinstance(key, All)
    memo = session.sort_items
    if everything and memo is not None and memo[0] is shown and memo[1] == uid:
        # The same view of the mailbox as the last SORT/THREAD ALL: the list
        # is replaced whenever a message comes or goes, and a flag change
        # (the one change made in place) moves no sort key.
        kept = memo[2]
        return lambda: kept
    records: list[Record] = list(shown)
    matcher = compile_search(
        key, len(records), box.largest_uid(), await _texts(session, key), saved=box.saved
    )
    reader = session.selected().mail.reader
    cache = session.server.sort_records
    # The keys stored when the messages were: only a message the parse
    # walker has not reached yet is parsed here (cache.get reads it).
    missing = cache.missing(r.guid for r in records) if with_records else []
    stored = (
        await session.mail.stored_sortkeys(session.selected().mailbox_id, missing, records)
        if missing
        else None
    )

    new_item = tuple.__new__

    def run() -> list[SortItem]:
        if stored is not None and stored.guids:
            try:
                cache.put_many(dict(zip(stored.guids, loads_joined(stored.joined), strict=True)))
            except ValueError:  # not this version's records: parsed again below
                pass
        if everything:  # SORT ... ALL, what webmail sends: no predicate per message
            chosen = list(enumerate(records, 1))
        else:
            chosen = [(seq, r) for seq, r in enumerate(records, 1) if matcher(seq, r, reader)]
        sort_records = (
            cache.get_many([r.guid for _, r in chosen], reader)
            if with_records
            else [NO_RECORD] * len(chosen)
        )
        # tuple.__new__, not SortItem(...): the named tuple's __new__ is a
        # Python function, and a SORT makes one item per message.
        items = [
            new_item(
                SortItem,
                (
                    record.uid if uid else seq,
                    int(record.internaldate.timestamp()),
                    record.size,
                    sort_record,
                ),
            )
            for (seq, record), sort_record in zip(chosen, sort_records, strict=True)
        ]
        if everything and with_records:
            session.sort_items = (shown, uid, items)
        return items

    return run


# The SORT ALL orders a session keeps for its view (each up to one int a message).
_KEPT_ORDERS: Final = 4


async def sort_messages(session: Session, cmd: c.Sort) -> Reply:
    criteria = cmd.criteria
    everything = isinstance(cmd.key, All)
    shown = session.selected().box.records
    view = session.sort_orders_view
    same_view = everything and view is not None and view[0] is shown and view[1] == cmd.uid
    kept = session.sort_orders.get(criteria) if same_view else None
    if kept is not None:
        ordered = list(kept)
    else:
        with_records = needs_records(criteria)
        find = await _found(session, cmd.key, cmd.uid, with_records)

        def run() -> list[int]:
            return sort(find(), criteria)

        ordered = await session.mail.run_blocking(run)
        if everything:  # kept for this view, until a message comes or goes
            if not same_view:
                session.sort_orders = {}
                session.sort_orders_view = (shown, cmd.uid)
            orders = session.sort_orders
            if len(orders) >= _KEPT_ORDERS:  # a client cycling criteria keeps a few
                del orders[next(iter(orders))]
            orders[criteria] = tuple(ordered)
    options = cmd.return_options
    if options is None:
        await session.send(sort_response(ordered))
    else:
        if "SAVE" in options:
            # RFC 5267 3 with RFC 5182: "$" as SEARCH (SAVE) would keep it,
            # MIN and MAX in sort order.
            box = session.selected().box
            uid_of = {seq: r.uid for seq, r in enumerate(box.records, 1)}
            uids = ordered if cmd.uid else [uid_of[n] for n in ordered]
            box.saved = saved_result(options, uids, cmd.partial)
        if options != ("SAVE",):
            rest = tuple(o for o in options if o != "SAVE")
            await session.send(esort_response(cmd.tag, cmd.uid, rest, ordered, cmd.partial))
    await session.report(cmd)
    return Reply(f"{'UID ' if cmd.uid else ''}SORT completed")


async def thread_messages(session: Session, cmd: c.Thread) -> Reply:
    find = await _found(session, cmd.key, cmd.uid)
    algorithm = cmd.algorithm

    def run() -> bytes:
        return thread_response(find(), algorithm)

    threads = await session.mail.run_blocking(run)
    # RFC 5256 4: "* THREAD" and the thread lists (none when nothing matched).
    await session.send(b"* THREAD " + threads + b"\r\n" if threads else b"* THREAD\r\n")
    await session.report(cmd)
    return Reply(f"{'UID ' if cmd.uid else ''}THREAD completed")


HANDLERS: Final[dict[type[c.Command], Handler]] = {
    c.Search: search,
    c.Sort: sort_messages,
    c.Thread: thread_messages,
}
