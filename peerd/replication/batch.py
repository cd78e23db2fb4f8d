"""Many accounts per round trip: how ``replicate --all`` syncs a batch.

How this works (Cyrus's sync_client puts many users in one exchange; the
steps are the one-account sync's, :mod:`peerd.replication.client`, done for
a batch of accounts at once):

1. One read here: the batch's ownership rows, sync-log rows, pending
   renames and account states (:func:`engine.bulkstate.read_states`). An
   account with a rename the partner has not taken leaves the batch.
   The batch is cut so that the messages it carries stay within
   ``sync_batchsize`` and its ``batch_user_some`` within one request (an
   account always goes whole; one whose summaries alone outgrow a request
   leaves the batch, and its USER_SOME goes alone, in parts).
2. ``batch_user_some``: every account's summaries in one request; the
   replica answers each account's state, or that account's refusal (its
   fence refused it: reported for that account, the others go on); it
   leaves out an account that would take its answer past what we read,
   which is then synced alone.
3. One read: the owner's side of every compare
   (:func:`engine.bulkstate.owner_views`), then :func:`engine.compare.compare`
   per account. An account whose compare needs a repair here (the replica
   holds mail we never had, or a UID names two messages) leaves the batch.
4. RESERVE every GUID the batch's pushes name, in one request; UPLOAD the
   missing ones in large frame batches.
5. ``batch_apply``: every push, in as few requests as the apply budget
   allows (a push too large for one goes alone); the replica applies each
   account in its own savepoint of one transaction, fenced by that account's
   row, and answers each account's result or refusal. An account it reports
   still different leaves the batch.
6. ENDUSER: one write acknowledges the sync-log rows read in step 1 of
   every account that landed.

An account that leaves the batch is synced alone afterwards
(:meth:`SyncClient.sync_account`: its repair rounds, its full compare).
A partner whose release predates the batch requests answers them 404: the
client remembers it and syncs every account alone, as before. A batch that
fails as a whole (the partner went away mid-request) acknowledges nothing:
a later ``replicate --all`` finds what did not land by its digests.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from engine import synclog
from engine.bulkstate import owner_views, read_states
from engine.compare import Push, compare
from engine.errors import EngineError, PartnerDown, PartnerLacksRequest, SyncProtocolError
from engine.syncstate import AccountState
from engine.syncwire import (
    decode_account_state,
    decode_json,
    encode_json,
    encode_push,
    encode_summary,
)
from ownership import table as ownership_table
from ownership.rows import OwnershipView
from peerd.node.errormap import client_text
from peerd.replication.client import SyncClient, SyncReport
from peerd.replication.trace import push_steps

__all__ = ["BATCH_ACCOUNTS", "BatchOutcome", "sync_batch"]

BATCH_ACCOUNTS = 200  # accounts read and sent together (the replica takes up to 1,000)


@dataclass(slots=True)
class BatchOutcome:
    """What one batch did: a report per account that landed, (account, error
    code, detail) per account refused, and the accounts to sync alone."""

    reports: list[SyncReport] = field(default_factory=list)
    errors: list[tuple[str, str, str]] = field(default_factory=list)
    alone: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Account:
    name: str
    row: OwnershipView
    log_rows: list[tuple[int, int]]
    state: AccountState
    report: SyncReport
    wire: bytes = b""  # the account's item of batch_user_some
    push: Push | None = None
    owner_state: AccountState | None = None
    replica_names: dict[str, str] = field(default_factory=dict)


async def sync_batch(
    client: SyncClient, accounts: Sequence[str], *, compressed: bool | None = None
) -> BatchOutcome:
    """Sync ``accounts`` (at most :data:`BATCH_ACCOUNTS`) as the module docstring says."""
    outcome = BatchOutcome()
    if client.batches is False:
        outcome.alone.extend(accounts)
        return outcome
    names = sorted(set(accounts))
    async with contextlib.AsyncExitStack() as held:
        for name in names:  # in name order: two batches never wait on each other
            await held.enter_async_context(client.lock(name))
        for name in names:
            client.mark(name, 0, None)
        use_zlib = client.compress_default if compressed is None else compressed
        items = await _local(client, names, outcome)
        # The partner's limit cuts the batches: learn it before the first
        # (a partner that cannot be reached fails each batch, as it would).
        with contextlib.suppress(EngineError):
            await client.speak()
        budget = client.part_budget - len(_BATCH_ENVELOPE)
        fitting: list[_Account] = []
        for item in items:
            item.wire = encode_json(
                {
                    "account": item.name,
                    "ownership": client.wire_row(item.row),
                    "summaries": [encode_summary(m.summary) for m in item.state.mailboxes],
                }
            )
            if len(item.wire) + 1 > budget:
                outcome.alone.append(item.name)  # USER_SOME alone, in parts
            else:
                fitting.append(item)
        for group in _groups(fitting, client.node.config.sync.sync_batchsize, budget):
            await _sync_group(client, group, use_zlib, outcome)
    return outcome


# What a batch request adds to its accounts' items: {"accounts":[...]}.
_BATCH_ENVELOPE = b'{"accounts":[]}'


def _batch_body(pieces: Sequence[bytes]) -> bytes:
    return b'{"accounts":[' + b",".join(pieces) + b"]}"


async def _local(client: SyncClient, names: list[str], outcome: BatchOutcome) -> list[_Account]:
    """Step 1: what this node holds of the batch, in one read."""
    me = client.node.name

    def read(
        session: Session,
    ) -> tuple[
        dict[str, OwnershipView],
        set[str],
        dict[str, list[tuple[int, int]]],
        dict[str, AccountState],
    ]:
        pending = synclog.pending(session, names, client.channel)
        return (
            ownership_table.views_of(session, names),
            ownership_table.renamed_onto(session, names),
            {p.account: p.rows for p in pending},
            read_states(session, names),
        )

    rows, renamed, log_rows, states = await client.node.store.read(read)
    items: list[_Account] = []
    for name in names:
        if name in renamed:
            outcome.alone.append(name)  # RENAME first: sync_account sends it
            continue
        # An account with no row (from before ownership rows existed) is ours.
        row = rows.get(name) or OwnershipView(name, me, me, 0, "normal")
        if not client.may_push(row):
            detail = f"{me} does not own {name} (owner {row.owner})"
            outcome.errors.append((name, "sync_refused", detail))
            continue
        items.append(_Account(name, row, log_rows.get(name, []), states[name], SyncReport(name)))
    return items


def _groups(items: list[_Account], batchsize: int, budget: int) -> list[list[_Account]]:
    """Cut the batch so that the messages it holds stay within ``batchsize``
    and its ``batch_user_some`` within ``budget`` octets."""
    groups: list[list[_Account]] = [[]]
    held = 0
    size = 0
    for item in items:
        count = sum(m.summary.exists for m in item.state.mailboxes)
        cost = len(item.wire) + 1
        if groups[-1] and (held + count > batchsize or size + cost > budget):
            groups.append([])
            held = size = 0
        groups[-1].append(item)
        held += count
        size += cost
    return [g for g in groups if g]


async def _sync_group(
    client: SyncClient, group: list[_Account], use_zlib: bool, outcome: BatchOutcome
) -> None:
    started = time.perf_counter()
    part = BatchOutcome()  # merged only if the exchange ends
    try:
        landed = await _exchange(client, group, use_zlib, part)
    except PartnerLacksRequest:
        client.batches = False
        outcome.alone.extend(item.name for item in group)
        return
    except PartnerDown as exc:
        detail = client_text(exc, "replicate", admin=True)
        outcome.errors.extend((item.name, exc.code, detail) for item in group)
        return
    except EngineError:
        # The batch failed as a whole (an error the replica could not pin on
        # one account): each account alone says what is wrong with it.
        outcome.alone.extend(item.name for item in group)
        return
    client.batches = True
    outcome.errors.extend(part.errors)
    outcome.alone.extend(part.alone)
    done = [item for item in group if item.name in landed]
    rows = [r for item in done for r in item.log_rows]
    if rows and client.owns_sync_log:
        await client.node.store.write(lambda s: synclog.acknowledge(s, rows))
    for item in done:
        if item.owner_state is not None and item.owner_state.exists:
            client.mark(item.name, item.row.epoch, item.owner_state)
        item.report.steps.append("ENDUSER")
        item.report.seconds = time.perf_counter() - started
        client.node.counters.inc("syncs")
        outcome.reports.append(item.report)


async def _exchange(
    client: SyncClient, group: list[_Account], use_zlib: bool, outcome: BatchOutcome
) -> set[str]:
    """Steps 2 to 5 for one group; the accounts that landed."""
    by_name = {item.name: item for item in group}
    request = _batch_body([item.wire for item in group])
    raw = await client.call("batch_user_some", request, compressed=use_zlib)
    replicas: dict[str, AccountState] = {}
    for answer in _answers(decode_json(raw), by_name, outcome):
        item = by_name[answer["account"]]
        if "error" in answer:
            outcome.errors.append((item.name, str(answer["error"]), str(answer.get("detail", ""))))
            continue
        replicas[item.name] = decode_account_state(answer.get("state"))
        names = " ".join(m.summary.name for m in item.state.mailboxes) or item.name
        item.report.steps.extend([f"MAILBOXES {names}", f"USER_SOME {item.name}"])
        item.report.requests.append(f"POST /sync/v1/batch_user_some ({len(group)} accounts)")

    views = await client.node.store.read(lambda s: owner_views(s, replicas))
    landed: set[str] = set()
    sending: list[_Account] = []
    for name, replica in replicas.items():
        item, view = by_name[name], views[name]
        item.report.records_compared += sum(len(r) for r in view.records.values()) + sum(
            len(m.records) for m in replica.mailboxes
        )
        repairs, push = compare(view.state, view.records, replica, view.known)
        if not repairs.empty:
            outcome.alone.append(name)  # its repair rounds run alone
            continue
        item.push, item.owner_state = push, view.state
        item.replica_names = {m.summary.uniqueid: m.summary.name for m in replica.mailboxes}
        if push.empty:
            landed.add(name)
        else:
            sending.append(item)
    # Each push as batch_apply carries it; one too large for a request of its
    # own goes alone (the one-account path applies it in several).
    pieces: dict[str, bytes] = {}
    for item in list(sending):
        pieces[item.name] = encode_json(
            {
                "account": item.name,
                "ownership": client.wire_row(item.row),
                "push": encode_push(_push(item)),
            }
        )
        if len(pieces[item.name]) + 1 + len(_BATCH_ENVELOPE) > client.apply_budget:
            sending.remove(item)
            outcome.alone.append(item.name)
    if not sending:
        return landed

    guids = sorted({r.guid for i in sending for mp in _push(i).mailboxes for r in mp.upserts})
    missing: set[str] = set()
    if guids:
        missing = set(await client.reserve(guids, use_zlib, None))
        if missing:
            scratch = SyncReport("")
            await client.upload(sorted(missing), use_zlib, scratch)
    _account_for(client, sending, missing)

    for chunk in _by_size(sending, pieces, client.apply_budget - len(_BATCH_ENVELOPE)):
        body = _batch_body([pieces[item.name] for item in chunk])
        raw = await client.call("batch_apply", body, compressed=use_zlib)
        sent = {item.name: item for item in chunk}
        for answer in _answers(decode_json(raw), sent, outcome):
            item = by_name[answer["account"]]
            if "error" in answer:
                detail = str(answer.get("detail", ""))
                outcome.errors.append((item.name, str(answer["error"]), detail))
            elif answer.get("mismatched"):
                outcome.alone.append(item.name)  # a full compare, alone
            else:
                item.report.requests.append(f"POST /sync/v1/batch_apply ({len(chunk)} accounts)")
                landed.add(item.name)
    return landed


def _by_size(items: list[_Account], pieces: dict[str, bytes], budget: int) -> list[list[_Account]]:
    """``items`` in runs whose pieces (with their commas) stay within ``budget``."""
    runs: list[list[_Account]] = [[]]
    size = 0
    for item in items:
        cost = len(pieces[item.name]) + 1
        if runs[-1] and size + cost > budget:
            runs.append([])
            size = 0
        runs[-1].append(item)
        size += cost
    return [r for r in runs if r]


def _push(item: _Account) -> Push:
    assert item.push is not None
    return item.push


def _account_for(client: SyncClient, sending: list[_Account], missing: set[str]) -> None:
    """Each account's report: its steps, and the messages uploaded for it
    (a message two accounts hold counts for the first)."""
    counted: set[str] = set()
    for item in sending:
        push, report = _push(item), item.report
        own = {r.guid: r.size for mp in push.mailboxes for r in mp.upserts}
        mine = {g for g in own if g in missing and g not in counted}
        counted |= mine
        report.uploaded += len(mine)
        report.upload_bytes += sum(own[g] for g in mine)
        client.tally(report, push)
        report.setflags += sum(
            1 for mp in push.mailboxes if not mp.create for r in mp.upserts if r.guid not in missing
        )
        report.steps.extend(push_steps(push, item.replica_names, len(own), mine))


def _answers(
    answer: dict[str, Any], sent: dict[str, _Account], outcome: BatchOutcome
) -> list[dict[str, Any]]:
    """The per-account items of a batch answer, each naming an account we
    sent; an account the answer leaves out is synced alone."""
    items = answer.get("accounts")
    if not isinstance(items, list):
        raise SyncProtocolError("a batch answer must hold accounts")
    for item in items:
        if not isinstance(item, dict) or item.get("account") not in sent:
            raise SyncProtocolError("a batch answer names an account that was not sent")
    answered = {item["account"] for item in items}
    outcome.alone.extend(name for name in sent if name not in answered)
    return items
