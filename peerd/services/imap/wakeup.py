"""The parked IDLE sessions of one change, told in one go.

How this works: the store's listener hands
:meth:`peerd.services.imap.server.ImapServer.on_change` the mailboxes a
commit changed; the sessions parked in IDLE (RFC 2177) on them are told here
by :func:`tell`, without waking their tasks, at a cost per changed mailbox
and not per session where it can:

1. **One read** of every changed mailbox (:func:`engine.mailview.snapshots_of`).
2. **One write**, beside the read, that claims the new ``\\Recent`` UIDs
   of all of them (RFC 3501 2.3.2: of each mailbox, the first parked session
   not under EXAMINE gets them; :meth:`peerd.node.node.Node.write_owned_many`
   runs the fence for every owner in that transaction). UIDs claimed past
   the read's view are marked when they arrive; UIDs that arrive after the
   claim come with a change of their own, and are claimed then.
3. **Shared bytes**: each session's untagged responses are decided by its
   own core (:meth:`~peerd.protocols.imap.selected.Selected.update`:
   ``EXPUNGE`` or ``VANISHED``, ``FETCH`` with ``MODSEQ`` under CONDSTORE,
   ``EXISTS``, ``RECENT``), but sessions of a mailbox whose cores are in the
   same state (:meth:`~peerd.protocols.imap.selected.Selected.state_key`:
   the same records, \\Recent ranges, keywords and extensions) get them from
   one computation: the others take its result
   (:meth:`~peerd.protocols.imap.selected.Selected.follow`) and its bytes are
   written to each socket.

A session that is no longer parked when its turn comes, whose client is
slow to read (64 KiB unread), whose mailbox was deleted, or whose owner the
fence refused, is marked changed and woken instead: it reports for itself
(:meth:`peerd.services.imap.session.Session.report`) and meets any error
there.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Final

from engine import mailview
from engine.mailview import Snapshot
from peerd.node import failpoints
from peerd.node.node import Node
from peerd.protocols.imap.selected import Selected
from peerd.services.imap.session import Session

__all__ = ["PUSH_BUFFER", "tell"]

log = logging.getLogger("peerd.services.imap")

# A parked session whose client has this much unread is woken instead of
# written to: its own task then waits for the client (drain).
PUSH_BUFFER: Final = 64 << 10


async def tell(node: Node, parked: Mapping[str, Sequence[Session]]) -> None:
    """Tell the sessions parked on each changed mailbox (by uniqueid) what changed."""
    where: dict[int, tuple[str, str]] = {}  # mailbox id -> (uniqueid, owner)
    for uniqueid, sessions in parked.items():
        selection = sessions[0].selection
        if selection is None or selection.uniqueid != uniqueid:
            _wake(sessions, uniqueid)
            continue
        where[selection.mailbox_id] = (uniqueid, selection.owner)
    if not where:
        return
    # The claim runs beside the read (the commit thread and a reader): of
    # each mailbox, the first parked session that may claim (not EXAMINE).
    claimers: dict[int, Session] = {}
    for mailbox_id, (uniqueid, _) in where.items():
        claimer = next((s for s in parked[uniqueid] if _may_claim(s, uniqueid)), None)
        if claimer is not None:
            claimers[mailbox_id] = claimer
    claiming = asyncio.ensure_future(_claim(node, {m: where[m][1] for m in claimers}))
    try:
        fresh = await node.store.read(lambda s: mailview.snapshots_of(s, where))
    except Exception:
        log.exception("reading %d mailboxes for their idle sessions failed", len(where))
        fresh = {}
    claimed = await claiming
    for mailbox_id, (uniqueid, _) in where.items():
        sessions = parked[uniqueid]
        view = fresh.get(mailbox_id)
        claimer = claimers.get(mailbox_id)
        if claimer is not None and mailbox_id not in claimed:
            _wake(sessions, uniqueid)  # deleted, refused, or the claim failed
        elif view is None:
            mine = claimer.selection if claimer is not None else None
            if mine is not None and mine.uniqueid == uniqueid:
                mine.box.claimed(*claimed[mailbox_id])  # \Recent stays its
            _wake(sessions, uniqueid)  # deleted, or the read failed
        else:
            _write(sessions, uniqueid, view, claimer, claimed.get(mailbox_id, (0, 0)))


async def _claim(node: Node, owners: Mapping[int, str]) -> dict[int, tuple[int, int]]:
    """The new ``\\Recent`` UIDs of these mailboxes (by id, with their owners)
    claimed in one write; a mailbox left out was not (deleted, refused by
    the fence, or the write failed)."""
    if not owners:
        return {}
    await failpoints.pause("imap.wakeup.claim")  # tests: the owner moves meanwhile
    try:
        return await node.write_owned_many(
            set(owners.values()),
            lambda s, allowed: mailview.claim_recent_many(
                s, {m: owner for m, owner in owners.items() if owner in allowed}
            ),
        )
    except Exception:
        log.exception("claiming \\Recent for %d mailboxes failed", len(owners))
        return {}


def _may_claim(session: Session, uniqueid: str) -> bool:
    """Whether ``session`` takes new ``\\Recent`` UIDs of the mailbox (RFC
    3501 6.3.2: EXAMINE leaves them alone)."""
    selection = session.selection
    return selection is not None and selection.uniqueid == uniqueid and not selection.box.readonly


def _write(
    sessions: Sequence[Session],
    uniqueid: str,
    view: Snapshot,
    claimer: Session | None,
    claimed: tuple[int, int],
) -> None:
    # The result of update() by the state its core was in before: a session
    # in a state already computed takes that result and the same bytes.
    done: dict[tuple[object, ...], tuple[Selected, bytes]] = {}
    for session in sessions:
        selection = session.selection
        if selection is None or selection.uniqueid != uniqueid:
            session.changed({uniqueid})
            continue
        box = selection.box
        if session is claimer:
            box.claimed(*claimed)  # \Recent is its, whether written here or not
        writer = session.writer
        if not session.parked or writer.transport.get_write_buffer_size() > PUSH_BUFFER:
            session.changed({uniqueid})
            continue
        if view.highestmodseq < box.highestmodseq:
            continue  # it was told something newer already
        key = box.state_key()
        same = done.get(key) if key is not None else None
        if same is None:
            out = box.update(view, expunges=True)
            if key is not None:
                done[key] = (box, out)
        else:
            box.follow(same[0])
            out = same[1]
        if out:
            writer.write(out)


def _wake(sessions: Sequence[Session], uniqueid: str) -> None:
    for session in sessions:
        session.changed({uniqueid})
