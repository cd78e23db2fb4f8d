"""IMAP FETCH and UID FETCH (RFC 3501 6.4.5; RFC 7162 CHANGEDSINCE and VANISHED).

How this works: the core plans the answer
(:meth:`~peerd.protocols.imap.selected.Selected.plan_fetch`: items, messages,
which to mark ``\\Seen`` first, whether VANISHED (EARLIER) goes before). The
handler reads the tombstones VANISHED needs, makes the ``\\Seen`` write, then
renders the responses (:func:`~peerd.protocols.imap.fetchreply.render_fetch`)
off the event loop in groups (ENVELOPE, BODYSTRUCTURE and BODY from the
server's structure cache, filled before each group from what the store keeps
of each message, :mod:`engine.parsed`, so no message is parsed per fetch): one thread hop per group, not per message, and
one large write per group. A group ends at :data:`_FETCH_GROUP` messages or
once it holds :data:`_FETCH_BYTES`, and the next is rendered only when the
socket has taken the last (write, then drain): a client that does not read
holds at most about one group in the daemon, however large the mailbox.
A message whose bytes cannot be read is left out and the tagged answer says
why (:func:`unreadable_reply`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from typing import Final

from engine.errors import Corrupt
from peerd.protocols.imap import commands as c
from peerd.protocols.imap.fetchatt import FetchAtt, Item
from peerd.protocols.imap.fetchreply import Reader, StructureCache, render_fetch
from peerd.protocols.imap.records import Record
from peerd.protocols.imap.responses import CODE_EXPUNGEISSUED, CODE_SERVERBUG
from peerd.protocols.imap.sequence import SequenceSet
from peerd.services.imap.session import Handler, Reply, Session

__all__ = ["HANDLERS", "render_group"]

log = logging.getLogger("peerd.services.imap")

# FETCH renders at most this many messages, and stops adding messages once
# it holds this many bytes, per thread hop and per socket write.
_FETCH_GROUP: Final = 256
_FETCH_BYTES: Final = 1 << 20

_STRUCTURES: Final = frozenset({Item.ENVELOPE, Item.BODYSTRUCTURE, Item.BODY})


async def fetch(session: Session, cmd: c.Fetch) -> Reply:
    await session.admit_condstore(cmd)
    selection = session.selected()
    box = selection.box
    plan = box.plan_fetch(cmd)
    if plan.vanished_since is not None:
        # RFC 7162 3.2.6: the requested UIDs expunged since, before the FETCHes.
        tombstones = await session.mail.vanished(selection.mailbox_id, plan.vanished_since)
        vanished = box.vanished_earlier(cmd.seqset, tombstones)
        if vanished:
            await session.send(vanished)
    if plan.seen:
        stored = await session.mail.store_flags(
            selection.mailbox_id, plan.seen, ["\\Seen"], mode="add"
        )
        box.absorb(stored.changed)
        plan = box.after_seen(plan)
    mail = session.mail
    structures = session.server.structures
    unreadable: list[int] = []
    start = 0
    structured = any(att in _STRUCTURES for att in plan.items)
    while start < len(plan.targets):
        if structured:
            # The structures stored when the messages were, for those of the
            # group not held in memory: only what is not stored is parsed.
            group = plan.targets[start : start + _FETCH_GROUP]
            missing = structures.missing(record.guid for _, record in group)
            if missing:
                structures.put_many(await mail.stored_structures(missing))
        data, failed, start = await mail.run_blocking(
            partial(render_group, plan.targets, start, plan.items, mail.reader, structures)
        )
        unreadable += failed
        await session.send(data)
    # RFC 3501 7.4.1: no EXPUNGE during FETCH (UID FETCH may).
    await session.report(cmd)
    name = f"{'UID ' if cmd.uid else ''}FETCH"
    if unreadable:
        return await unreadable_reply(session, name, unreadable)
    return Reply(f"{name} completed")


async def unreadable_reply(session: Session, name: str, uids: list[int]) -> Reply:
    """The NO for a FETCH that could not read some messages' bytes: expunged
    meanwhile by another session (their bytes may have been swept, RFC 5530
    EXPUNGEISSUED), or unreadable although still there (SERVERBUG)."""
    damaged = await session.mail.live_uids(session.selected().mailbox_id, uids)
    if not damaged:
        return Reply(f"{name}: some messages were expunged", CODE_EXPUNGEISSUED, "NO")
    log.error("FETCH: unreadable bytes of live messages, UIDs %s", damaged)
    listed = str(SequenceSet.from_numbers(damaged))
    return Reply(f"{name}: the data of UID {listed} cannot be read", CODE_SERVERBUG, "NO")


def render_group(
    targets: Sequence[tuple[int, Record]],
    start: int,
    items: Sequence[FetchAtt],
    reader: Reader,
    structures: StructureCache,
) -> tuple[bytes, list[int], int]:
    """The FETCH responses of the group that begins at ``targets[start]``, the
    UIDs whose bytes could not be read (missing or not matching their GUID:
    never served; those are left out), and where the next group begins.
    Runs in a worker thread."""
    out: list[bytes] = []
    unreadable: list[int] = []
    size = 0
    end = start
    for seq, record in targets[start : start + _FETCH_GROUP]:
        end += 1
        try:
            out.append(render_fetch(seq, record, items, reader, structures))
            size += len(out[-1])
        except Corrupt as exc:
            log.warning("FETCH of UID %d: %s", record.uid, exc.message)
            unreadable.append(record.uid)
        except OSError as exc:  # the spool itself in trouble (EIO, EACCES)
            log.error("FETCH of UID %d: the spool could not be read: %s", record.uid, exc)
            unreadable.append(record.uid)
        if size >= _FETCH_BYTES:
            break
    return b"".join(out), unreadable, end


HANDLERS: Final[dict[type[c.Command], Handler]] = {c.Fetch: fetch}
