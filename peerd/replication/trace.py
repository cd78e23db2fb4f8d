"""The ``peerctl replicate -v`` trace of one push, in Cyrus's order and words.

How this works: :func:`push_steps` turns what a sync is about to send (the
:class:`~engine.compare.Push`, the replica's mailbox names, the GUIDs the
replica lacks) into the lines ``sync_client -v`` prints: RESERVE, the
mailboxes to DELETE, then mailbox by mailbox — RENAME when the replica has
it under another name, CREATE with its ACL, uniqueid, last UID and
UIDVALIDITY, then SELECT and that mailbox's EXPUNGE, SETFLAGS, UPLOAD and
SETSEEN — and last the account's SUB, SIEVE, ANNOTATION, QUOTA and UNUSER. A value that
is absent prints as a word (``none``), never as Python's ``None``. The
uploads themselves go in large batches across mailboxes; the trace counts
each mailbox's share.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from engine.compare import MailboxPush, Push

__all__ = ["acl_text", "push_steps"]


def acl_text(acl: str) -> str:
    """An ACL as Cyrus prints it: identifier and rights, tab-separated, quoted."""
    try:
        entries = json.loads(acl or "{}")
    except ValueError:
        entries = {}
    if not isinstance(entries, dict):
        entries = {}
    return '"' + "".join(f"{who}\t{rights}\t" for who, rights in sorted(entries.items())) + '"'


def _mailbox_steps(
    account: str, mp: MailboxPush, replica_name: str | None, missing: set[str]
) -> list[str]:
    summary = mp.summary
    steps: list[str] = []
    if replica_name is not None and replica_name != summary.name and not mp.create:
        steps.append(f"RENAME {replica_name} {summary.name}")
    if mp.create:
        steps.append(f"CREATE {summary.name} {summary.uniqueid}")
        steps.append(f"   {acl_text(summary.acl)} {summary.last_uid} {summary.uidvalidity}")
    if not mp.upserts and not mp.expunges and not mp.create:
        return steps  # renamed only: nothing to select
    steps.append(f"SELECT {summary.name}")
    if mp.expunges:
        steps.append(f"EXPUNGE [{len(mp.expunges)} msgs]")
    # A new mailbox's records are all uploads, as Cyrus counts them (a
    # RESERVEd message is copied in on the replica, its bytes not sent
    # again); in one the replica has, records whose bytes it lacks are new
    # and the others change flags.
    uploads = len(mp.upserts) if mp.create else sum(1 for r in mp.upserts if r.guid in missing)
    flags = len(mp.upserts) - uploads
    if flags:
        steps.append(f"SETFLAGS [{flags} msgs]")
    if uploads:
        steps.append(f"UPLOAD [{uploads} msgs]")
    if mp.upserts:
        # Seen state travels in the records' flags; Cyrus prints this step.
        steps.append(f"SETSEEN {account} ...")
    return steps


def push_steps(
    push: Push,
    replica_names: Mapping[str, str],
    reserved: int,
    missing: set[str],
) -> list[str]:
    """The trace lines of ``push`` (``replica_names``: uniqueid -> the
    replica's name; ``reserved``: GUIDs asked about; ``missing``: those the
    replica lacks, to be uploaded)."""
    account = push.account
    steps: list[str] = []
    if reserved:
        steps.append(f"RESERVE [{reserved} msgs]")
    for uniqueid in push.deletes:
        steps.append(f"DELETE {replica_names.get(uniqueid, uniqueid)}")
    for mp in push.mailboxes:
        steps.extend(_mailbox_steps(account, mp, replica_names.get(mp.summary.uniqueid), missing))
    if push.subscriptions is not None:
        steps.append(f"SUB {account} [{len(push.subscriptions)}]")
    if push.sieve is not None:
        # Cyrus's SIEVE and ACTIVATE_SIEVE: the whole set travels in the push.
        steps.append(f"SIEVE {account} [{len(push.sieve)} scripts]")
        active = next((name for name, _, on in push.sieve if on), "")
        steps.append(f'ACTIVATE_SIEVE {account} "{active}"')
    if push.vacations is not None:
        steps.append(f"VACATION {account} [{len(push.vacations)} records]")
    if push.annotations is not None:
        # Cyrus's ANNOTATION records: the account's whole set travels.
        steps.append(f"ANNOTATION {account} [{len(push.annotations)} entries]")
    if push.import_cursors is not None:
        steps.append(f"IMPORT_CURSORS {account} [{len(push.import_cursors)} mailboxes]")
    if push.account_fields is not None:
        limit = push.account_fields[1]
        steps.append(f"QUOTA {account} {'none' if limit is None else limit}")
    if push.delete_account:
        steps.append(f"UNUSER {account}")
    return steps
