"""The parked IDLE sessions of one change, told in one go.

How this works: the store's listener hands
:meth:`peerd.services.imap.server.ImapServer.on_change` the mailboxes a
commit changed; the sessions parked in IDLE (RFC 2177) on them are told here
by :func:`tell`, without waking their tasks, at a cost per changed mailbox
and not per session where it can:

1. **One read** of every changed mailbox (:func:`engine.mailview.snapshots_of`).
2. **One write** that claims the new ``\\Recent`` UIDs of all of them
   (RFC 3501 2.3.2: of each mailbox, the first parked session that would
   claim gets them; :meth:`peerd.node.node.Node.write_owned_many` runs the
   fence for every owner in that transaction).
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

import logging
from collections.abc import Mapping, Sequence
from typing import Final

from engine import mailview
from engine.mailview import Snapshot
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
    try:
        fresh = await node.store.read(lambda s: mailview.snapshots_of(s, where))
    except Exception:
        log.exception("reading %d mailboxes for their idle sessions failed", len(where))
        for uniqueid, _ in where.values():
            _wake(parked[uniqueid], uniqueid)
        return
    claimers: dict[int, Session] = {}
    for mailbox_id, (uniqueid, _) in where.items():
        view = fresh.get(mailbox_id)
        if view is None:
            continue
        claimer = next((s for s in parked[uniqueid] if _would_claim(s, uniqueid, view)), None)
        if claimer is not None:
            claimers[mailbox_id] = claimer
    claimed: dict[int, tuple[int, int]] = {}
    if claimers:
        owners = {mailbox_id: where[mailbox_id][1] for mailbox_id in claimers}
        try:
            claimed = await node.write_owned_many(
                set(owners.values()),
                lambda s, allowed: mailview.claim_recent_many(
                    s, {m: owner for m, owner in owners.items() if owner in allowed}
                ),
            )
        except Exception:
            log.exception("claiming \\Recent for %d mailboxes failed", len(owners))
    for mailbox_id, (uniqueid, _) in where.items():
        sessions = parked[uniqueid]
        view = fresh.get(mailbox_id)
        claimer = claimers.get(mailbox_id)
        if view is None or (claimer is not None and mailbox_id not in claimed):
            _wake(sessions, uniqueid)  # deleted, refused, or the claim failed
            continue
        _write(sessions, uniqueid, view, claimer, claimed.get(mailbox_id, (0, 0)))


def _would_claim(session: Session, uniqueid: str, view: Snapshot) -> bool:
    """Whether ``session`` would claim new ``\\Recent`` UIDs of ``view``."""
    selection = session.selection
    return (
        selection is not None
        and selection.uniqueid == uniqueid
        and selection.box.needs_claim(view, view.recentuid)
    )


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
