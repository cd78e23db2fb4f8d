"""Compare an owner's account with its replica's and say what to do. Pure.

How this works (Cyrus's notify → compare → apply, with peerd's no-loss rule):
the owner's state wins on the replica, except that mail the owner never had
is never dropped to make the two agree. :func:`compare` returns two things:

- :class:`Repairs`, done on the **owner** first: messages that exist only on
  the replica and whose GUID the owner has never held (``known`` says which
  it has) are copied to the owner as new messages with new UIDs (``Pull``);
  where both sides used one UID for two different messages (a split), the
  owner's message also moves to a new UID (``Reassign``), since a client may
  have seen either; a mailbox only the replica has is created on the owner,
  or merged into the owner's mailbox of the same name. UIDs given by a repair
  are above both sides' ``last_uid``, so no UID ever names two messages.
  Modseqs get the same care (``Restamp``): every record the push will change
  on the replica must carry a modseq above the replica's HIGHESTMODSEQ, and
  the owner's HIGHESTMODSEQ must not be below the replica's. Otherwise a
  CONDSTORE/QRESYNC client that saw the replica (it served during a split)
  would ask the owner for changes since a modseq the owner has already used
  for older state, and miss some (RFC 7162 3.1: modseqs only grow). In
  normal running every owner change since the last sync is above the
  replica's HIGHESTMODSEQ already, so this repair is only needed after a
  split or damage.
- :class:`Push`, applied on the **replica**: create/rename/delete mailboxes by
  uniqueid, upsert records (UPLOAD when the replica lacks the GUID, SETFLAGS
  when it has the record or only its modseq differs), expunge records,
  subscriptions, quota, password. The replica takes the owner's modseqs and
  HIGHESTMODSEQ exactly. A record the replica had expunged and the owner
  still has comes back (``resurrected``: an EXPUNGE or MOVE made on the
  losing side of a split is undone, nothing is dropped).

When repairs are needed the caller applies them, reads the owner's state
again and compares again; the second round has only a push (the pulled GUIDs
are now known, so the replica's old copies are expunged, not pulled twice).

Records a side did not send are equal on both sides: in ``full`` mode the
replica sent every live record; in ``delta`` mode both sent only what changed
after the replica's ``sync_base``, and everything else is the shared base.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from engine import importcursors
from engine.syncstate import AccountState, MailboxState, MailboxSummary, RecordState

__all__ = ["MailboxPush", "Pull", "Push", "Reassign", "Repairs", "Restamp", "compare"]


@dataclass(frozen=True, slots=True)
class Pull:
    """Copy replica records into an owner mailbox (created if ``target`` is None)."""

    source: str
    target: str | None
    name: str
    adopt_uniqueid: str | None
    min_last_uid: int
    records: tuple[RecordState, ...]


@dataclass(frozen=True, slots=True)
class Reassign:
    """Give these owner records new UIDs (their UID names another message on the replica)."""

    uniqueid: str
    uids: tuple[int, ...]
    min_last_uid: int


@dataclass(frozen=True, slots=True)
class Restamp:
    """Raise an owner mailbox's HIGHESTMODSEQ to at least ``floor`` (the
    replica's); with ``bump``, allocate one more modseq and give it to the
    records ``uids`` (those the push changes on the replica whose modseq is
    not above ``floor``), so the push's changes, expunges included, are all
    newer than anything a client of the replica saw."""

    uniqueid: str
    floor: int
    uids: tuple[int, ...] = ()
    bump: bool = False


@dataclass(frozen=True, slots=True)
class Repairs:
    pulls: tuple[Pull, ...] = ()
    reassigns: tuple[Reassign, ...] = ()
    # (uniqueid, last_uid): the replica used UIDs we have not; never reuse them.
    raise_last_uid: tuple[tuple[str, int], ...] = ()
    restamps: tuple[Restamp, ...] = ()
    # import-imap's cursors merged with the replica's (engine.importcursors):
    # the owner's set becomes this before the push; None: it is already.
    import_cursors: tuple[tuple[str, int, int], ...] | None = None

    @property
    def empty(self) -> bool:
        return (
            not self.pulls
            and not self.reassigns
            and not self.raise_last_uid
            and not self.restamps
            and self.import_cursors is None
        )


@dataclass(frozen=True, slots=True)
class MailboxPush:
    """Make one replica mailbox equal to the owner's ``summary``."""

    summary: MailboxSummary
    upserts: tuple[RecordState, ...] = ()
    expunges: tuple[int, ...] = ()
    create: bool = False
    # Upserts of records the replica had expunged (its EXPUNGE or MOVE is
    # undone): for the repair report; not sent on the wire.
    resurrected: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Push:
    account: str
    delete_account: bool = False
    # (password_hash, quota_limit, message_limit)
    account_fields: tuple[str, int | None, int | None] | None = None
    create_account: bool = False
    deletes: tuple[str, ...] = ()
    mailboxes: tuple[MailboxPush, ...] = ()
    subscriptions: tuple[str, ...] | None = None
    unchanged: tuple[str, ...] = field(default=())
    # Sieve (Cyrus's SIEVE and ACTIVATE_SIEVE): the owner's whole set of
    # scripts with the active mark, and its vacation records; None: unchanged.
    sieve: tuple[tuple[str, str, bool], ...] | None = None
    vacations: tuple[tuple[str, str], ...] | None = None
    # METADATA (Cyrus's ANNOTATION): the owner's whole set; None: unchanged.
    annotations: tuple[tuple[str, str, bytes], ...] | None = None
    # import-imap's cursors: the owner's whole set; None: unchanged.
    import_cursors: tuple[tuple[str, int, int], ...] | None = None

    @property
    def empty(self) -> bool:
        return (
            not self.delete_account
            and self.account_fields is None
            and not self.deletes
            and not self.mailboxes
            and self.subscriptions is None
            and self.sieve is None
            and self.vacations is None
            and self.annotations is None
            and self.import_cursors is None
        )

    @property
    def resurrected(self) -> int:
        """Messages the replica had expunged (or lost with a deleted mailbox)
        that the push brings back."""
        return sum(len(mp.resurrected) for mp in self.mailboxes)


def compare(
    owner: AccountState,
    owner_records: dict[str, tuple[RecordState, ...]],
    replica: AccountState,
    known: frozenset[str],
) -> tuple[Repairs, Push]:
    """Plan one sync. ``owner_records`` holds the owner's records for every
    mailbox the replica sent records for or lacks (full: live records; delta:
    changed since the replica's base plus the UIDs the replica sent)."""
    if not owner.exists:
        return Repairs(), Push(owner.name, delete_account=replica.exists)
    own = owner.by_uniqueid()
    rep = replica.by_uniqueid()
    own_by_name = {m.summary.name: uid for uid, m in own.items()}
    pulls: list[Pull] = []
    reassigns: list[Reassign] = []
    raise_last_uid: list[tuple[str, int]] = []
    restamps: list[Restamp] = []
    deletes: list[str] = []
    pushes: list[MailboxPush] = []
    unchanged: list[str] = []

    for uniqueid, replica_box in rep.items():
        if uniqueid in own:
            continue
        live = [r for r in replica_box.records if not r.expunged]
        target = own_by_name.get(replica_box.summary.name)
        if uniqueid in owner.tombstones:
            # The owner deleted this mailbox; only mail it never had survives.
            keep = tuple(r for r in live if r.guid not in known)
            if keep:
                pulls.append(
                    Pull(
                        uniqueid,
                        target,
                        replica_box.summary.name,
                        None,
                        replica_box.summary.last_uid,
                        keep,
                    )
                )
        elif target is not None:
            # Created on both sides under one name: merge into the owner's.
            keep = tuple(r for r in live if r.guid not in known)
            if keep:
                last = max(replica_box.summary.last_uid, own[target].summary.last_uid)
                pulls.append(Pull(uniqueid, target, replica_box.summary.name, None, last, keep))
        else:
            # A mailbox the owner never knew (made on the replica during a
            # split): the owner adopts it, uniqueid and all.
            pulls.append(
                Pull(
                    uniqueid,
                    None,
                    replica_box.summary.name,
                    uniqueid,
                    replica_box.summary.last_uid,
                    tuple(live),
                )
            )
            continue
        deletes.append(uniqueid)

    for uniqueid, mine in own.items():
        theirs_state = rep.get(uniqueid)
        records = owner_records.get(uniqueid, ())
        if theirs_state is None:
            fresh = tuple(r for r in records if not r.expunged)
            # A mailbox the replica deleted comes back whole.
            back = tuple(r.uid for r in fresh) if uniqueid in replica.tombstones else ()
            pushes.append(MailboxPush(mine.summary, upserts=fresh, create=True, resurrected=back))
            continue
        if theirs_state.mode == "none":
            if mine.summary.same_content(theirs_state.summary):
                unchanged.append(uniqueid)
                continue
            # "none" means equal to the summary the owner sent, read before
            # this state: a write in between (a delivery while the replica
            # answered) is what the owner holds after the replica's
            # HIGHESTMODSEQ, a delta with no replica records. Skipping it
            # would mark the replica as having it and lose it until the
            # next full compare.
            theirs_state = MailboxState(
                replace(theirs_state.summary, sync_base=theirs_state.summary.highestmodseq),
                "delta",
            )
        complete = theirs_state.mode == "full"
        theirs = {r.uid: r for r in theirs_state.records}
        ours = {r.uid: r for r in records}
        upserts: list[RecordState] = []
        expunges: list[int] = []
        conflicts: list[int] = []
        pulled: list[RecordState] = []
        resurrected: list[int] = []
        replica_last_uid = theirs_state.summary.last_uid
        for uid in sorted(set(ours) | set(theirs)):
            o = ours.get(uid)
            r = theirs.get(uid)
            o_live = o is not None and not o.expunged
            r_live = r is not None and not r.expunged
            if o is not None and o_live:
                if r is None or not r_live:
                    upserts.append(o)
                    # Expunged there: a tombstone it sent, or (it sent all its
                    # live records) a UID it has used and no longer holds.
                    if r is not None or (complete and uid <= replica_last_uid):
                        resurrected.append(uid)
                elif r.guid == o.guid:
                    if (
                        r.flags != o.flags
                        or r.internaldate != o.internaldate
                        or r.modseq != o.modseq
                    ):
                        upserts.append(o)
                elif r.guid in known:
                    upserts.append(o)
                else:
                    conflicts.append(uid)
                    pulled.append(r)
            elif r is not None and r_live:
                if r.guid in known:
                    expunges.append(uid)
                else:
                    pulled.append(r)
            elif r is None and o is not None and not complete:
                # Delta: the owner expunged it after the base the replica holds.
                expunges.append(uid)
        last = max(mine.summary.last_uid, theirs_state.summary.last_uid)
        if last > mine.summary.last_uid and not conflicts and not pulled:
            raise_last_uid.append((uniqueid, last))
        if conflicts:
            reassigns.append(Reassign(uniqueid, tuple(conflicts), last))
        if pulled:
            pulls.append(Pull(uniqueid, uniqueid, mine.summary.name, None, last, tuple(pulled)))
        restamp = _restamp(mine.summary, theirs_state.summary, upserts, expunges)
        if restamp is not None:
            restamps.append(restamp)
        pushes.append(
            MailboxPush(
                mine.summary, tuple(upserts), tuple(expunges), resurrected=tuple(resurrected)
            )
        )

    account_fields: tuple[str, int | None, int | None] | None = None
    if (
        not replica.exists
        or replica.password_hash != owner.password_hash
        or replica.quota_limit != owner.quota_limit
        or replica.message_limit != owner.message_limit
    ):
        account_fields = (owner.password_hash, owner.quota_limit, owner.message_limit)
    # A copy of a cursor is never thrown away (engine.importcursors).
    cursors = importcursors.merge(owner.import_cursors, replica.import_cursors)
    subscriptions = (
        owner.subscriptions
        if not replica.exists or owner.subscriptions != replica.subscriptions
        else None
    )
    push = Push(
        account=owner.name,
        account_fields=account_fields,
        create_account=not replica.exists,
        deletes=tuple(deletes),
        mailboxes=tuple(pushes),
        subscriptions=subscriptions,
        unchanged=tuple(unchanged),
        # An account the replica lacks has no Sieve state there: () is equal.
        sieve=owner.sieve if owner.sieve != replica.sieve else None,
        vacations=owner.vacations if owner.vacations != replica.vacations else None,
        annotations=owner.annotations if owner.annotations != replica.annotations else None,
        import_cursors=cursors if cursors != replica.import_cursors else None,
    )
    repairs = Repairs(
        tuple(pulls),
        tuple(reassigns),
        tuple(raise_last_uid),
        tuple(restamps),
        import_cursors=cursors if cursors != owner.import_cursors else None,
    )
    return repairs, push


def _restamp(
    mine: MailboxSummary,
    theirs: MailboxSummary,
    upserts: list[RecordState],
    expunges: list[int],
) -> Restamp | None:
    """The modseq repair one mailbox needs before its push, if any.

    The replica will take our records' modseqs, stamp its expunges with our
    HIGHESTMODSEQ and take our HIGHESTMODSEQ. Each of those must be above the
    replica's HIGHESTMODSEQ (``floor``) for a change the push makes there,
    and ours must not be below it.
    """
    floor = theirs.highestmodseq
    stale = tuple(r.uid for r in upserts if r.modseq <= floor)
    bump = bool(stale) or (bool(expunges) and mine.highestmodseq <= floor)
    if not bump and mine.highestmodseq >= floor:
        return None
    return Restamp(mine.uniqueid, floor, stale, bump)
