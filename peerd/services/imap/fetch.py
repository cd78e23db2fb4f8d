"""IMAP FETCH and UID FETCH (RFC 3501 6.4.5; RFC 7162 CHANGEDSINCE and VANISHED).

How this works: the core plans the answer
(:meth:`~peerd.protocols.imap.selected.Selected.plan_fetch`: items, messages,
which to mark ``\\Seen`` first, whether VANISHED (EARLIER) goes before). The
handler reads the tombstones VANISHED needs, makes the ``\\Seen`` write, then
renders the responses (:class:`~peerd.protocols.imap.fetchreply.FetchRenderer`)
off the event loop in groups (ENVELOPE, BODYSTRUCTURE and BODY from the
server's structure cache, filled before each group from what the store keeps
of each message, :mod:`engine.parsed`, so no message is parsed per fetch): one thread hop per group, not per message, and
one large write per group. A group ends at :data:`_FETCH_GROUP` messages
(:data:`_RECORDS_GROUP` when no item needs the messages' octets) or once it
holds :data:`_FETCH_BYTES`; the next group is rendered while the last is
written, and the one after only once the socket has taken the last (write,
then drain): a client that does not read holds at most about two groups in
the daemon, however large the mailbox.
A message whose bytes cannot be read is left out and the tagged answer says
why (:func:`unreadable_reply`). When no item needs the messages' octets, a
group already rendered for the same items and the same (sequence number,
record) pairs is written again as it was
(:class:`~peerd.protocols.imap.fetchreply.RenderedGroups`, the server's):
no thread hop, no Python per message.

The octets of a whole-message literal (``BODY[]``, ``BODY.PEEK[]``,
``RFC822``, partial or not) of at least :data:`_SPAN_FROM` octets are not
copied through Python: the group holds the message's file, open and
verified (:meth:`engine.spool.Spool.open_verified`), and the handler sends
them with ``loop.sendfile`` after the literal's ``{n}`` CRLF: the kernel's
``sendfile(2)`` on a plain TCP transport, reads of the file in chunks
where the transport cannot (TLS). Smaller messages are cheaper to copy
than to send in a system call of their own; their bytes, like the
files', are hashed once while the file stays the same
(:meth:`engine.spool.Spool.read_verified`).

On plain TCP the handler writes such a group itself (:func:`send_direct`):
the pieces are not joined, each run of octets goes to the socket with one
``writev(2)`` and each literal of at least :data:`_DIRECT_SPAN_FROM`
octets with one ``sendfile(2)``, while the transport holds nothing of its
own; what the socket does not take then goes the transport's way above,
so the octets keep their order.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import BinaryIO, Final, cast

from engine.errors import Corrupt
from peerd.protocols.imap import commands as c
from peerd.protocols.imap.fetchatt import FetchAtt, Item
from peerd.protocols.imap.fetchreply import (
    FetchRenderer,
    Reader,
    RenderedGroups,
    Segment,
    Span,
    StructureCache,
    whole_message,
)
from peerd.protocols.imap.records import Record
from peerd.protocols.imap.responses import CODE_EXPUNGEISSUED, CODE_SERVERBUG
from peerd.protocols.imap.sequence import SequenceSet
from peerd.services.imap.access import selected_rights
from peerd.services.imap.session import Closed, Handler, Reply, Session

__all__ = ["HANDLERS", "Opener", "Sendable", "group_size", "render_group", "send_direct"]

log = logging.getLogger("peerd.services.imap")

# FETCH renders at most this many messages, and stops adding messages once
# it holds this many bytes, per thread hop and per socket write.
_FETCH_GROUP: Final = 256
_FETCH_BYTES: Final = 1 << 20
# ... and this many when no item needs the messages' octets (FLAGS, ENVELOPE,
# BODYSTRUCTURE...): fewer thread hops, each a wait for a CPU on a busy host.
_RECORDS_GROUP: Final = 2048
# The items answered from the record and the stored structures alone.
_NO_OCTETS: Final = frozenset(
    {Item.UID, Item.FLAGS, Item.INTERNALDATE, Item.RFC822_SIZE, Item.MODSEQ}
)
# A whole-message literal of at least this many octets is sent from its file
# (loop.sendfile: a future, a writer registered and removed each time) ...
_SPAN_FROM: Final = 64 << 10
# ... and from this many when the handler sends it itself on plain TCP
# (send_direct: one sendfile(2) call, no copy through Python).
_DIRECT_SPAN_FROM: Final = 16 << 10
# At most this many buffers to one writev(2) (Linux's IOV_MAX).
_IOV_MAX: Final = 1024
# Above this many octets held by the transport, wait for the socket first.
_HIGH_WATER: Final = 1 << 20
# sendfile the transport's way in steps of this many octets: each one is
# progress, bounded by the session's write timeout.
_SENDFILE_STEP: Final = 4 << 20

Opener = Callable[[str], tuple[BinaryIO, int]]
"""The message's file by GUID, open and verified, and its size."""


@dataclass(frozen=True, slots=True)
class Sendable:
    """``count`` octets from ``offset`` of an open message file, to send as they are."""

    file: BinaryIO
    offset: int
    count: int


_STRUCTURES: Final = frozenset({Item.ENVELOPE, Item.BODYSTRUCTURE, Item.BODY})


async def fetch(session: Session, cmd: c.Fetch) -> Reply:
    await session.admit_condstore(cmd)
    selection = session.selected()
    box = selection.box
    plan = box.plan_fetch(cmd)
    if plan.vanished_since is not None:
        # RFC 7162 3.2.6: the requested UIDs expunged since, before the FETCHes.
        tombstones = await selection.mail.vanished(selection.mailbox_id, plan.vanished_since)
        vanished = box.vanished_earlier(cmd.seqset, tombstones)
        if vanished:
            await session.send(vanished)
    # RFC 4314 4: a FETCH sets \Seen only for a user with the "s" right.
    if plan.seen and "s" in await selected_rights(session):
        stored = await selection.mail.store_flags(
            selection.mailbox_id, plan.seen, ["\\Seen"], mode="add"
        )
        box.absorb(stored.changed)
        plan = box.after_seen(plan)
    mail = selection.mail
    structures = session.server.structures
    # Only a FETCH of whole messages has octets to send from the files.
    opener = mail.opener if any(whole_message(att) for att in plan.items) else None
    structured = any(att in _STRUCTURES for att in plan.items)
    targets = plan.targets
    count = group_size(plan.items)
    # Responses that need no octets are served again from the groups rendered.
    rendered: RenderedGroups | None = (
        session.server.rendered if count == _RECORDS_GROUP and opener is None else None
    )
    # On plain TCP the group's pieces are written by the handler itself
    # (send_direct): kept apart, not joined, and more literals from their files.
    direct = opener is not None and _direct_fd(session) is not None

    async def render(start: int) -> tuple[list[bytes | Sendable], list[int], int]:
        if rendered is not None:
            hit = rendered.get(plan.items, targets, start)
            if hit is not None:
                return [hit[0]], [], hit[1]
        if structured:
            # The structures stored when the messages were, for those of the
            # group not held in memory: only what is not stored is parsed.
            group = targets[start : start + count]
            missing = structures.missing(record.guid for _, record in group)
            if missing:
                structures.put_many(await mail.stored_structures(missing))
        done = await mail.run_blocking(
            partial(
                render_group,
                targets,
                start,
                plan.items,
                mail.cached_reader,
                structures,
                opener,
                count=count,
                direct=direct,
            )
        )
        segments, failed, end = done
        if rendered is not None and not failed and len(segments) == 1:
            # A group with a message left out is not kept: it would hide the NO.
            rendered.put(plan.items, targets[start:end], cast(bytes, segments[0]))
        return done

    unreadable: list[int] = []
    # The next group is rendered while the last one is written: at most two
    # groups in the daemon, and the worker thread and the socket both busy.
    following = asyncio.ensure_future(render(0)) if targets else None
    try:
        while following is not None:
            segments, failed, start = await following
            following = asyncio.ensure_future(render(start)) if start < len(targets) else None
            unreadable += failed
            await (send_direct if direct else send_segments)(session, segments)
    finally:
        if following is not None:
            _discard(following)
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
    selection = session.selected()
    damaged = await selection.mail.live_uids(selection.mailbox_id, uids)
    if not damaged:
        return Reply(f"{name}: some messages were expunged", CODE_EXPUNGEISSUED, "NO")
    log.error("FETCH: unreadable bytes of live messages, UIDs %s", damaged)
    listed = str(SequenceSet.from_numbers(damaged))
    return Reply(f"{name}: the data of UID {listed} cannot be read", CODE_SERVERBUG, "NO")


async def send_segments(session: Session, segments: list[bytes | Sendable]) -> None:
    """Write a group's responses; each :class:`Sendable`'s file is closed,
    sent or not."""
    try:
        for segment in segments:
            if isinstance(segment, bytes):
                session.writer.write(segment)
                continue
            await session.drain()
            sent = await _sendfile(session, segment)
            if sent != segment.count:
                # The literal announced more octets than the file gave (it
                # shrank since): the framing is lost, so is the connection.
                log.error("FETCH: a message file gave %d of %d octets", sent, segment.count)
                raise Closed
        await session.drain()
    finally:
        for segment in segments:
            if isinstance(segment, Sendable):
                segment.file.close()


def _direct_fd(session: Session) -> int | None:
    """The socket's descriptor when the session is plain TCP (no TLS): what
    :func:`send_direct` writes to."""
    transport = session.writer.transport
    # Under TLS the socket carries records the transport encrypts: never direct.
    if session.tls or transport.get_extra_info("sslcontext") is not None:
        return None
    sock = transport.get_extra_info("socket")
    if sock is None or sock.type != socket.SOCK_STREAM:
        return None
    return int(sock.fileno())


async def send_direct(session: Session, segments: list[bytes | Sendable]) -> None:
    """:func:`send_segments` on plain TCP, with fewer copies: while the
    transport has nothing buffered, runs of octets go to the socket with
    one ``writev(2)`` (not joined first) and files with ``sendfile(2)``,
    each made right here (non-blocking; no await between the test and the
    call, so nothing else writes in between). What the socket does not
    take goes the transport's way (buffered, or ``loop.sendfile``), which
    waits for the socket; the order of the octets is kept either way.
    Each :class:`Sendable`'s file is closed, sent or not."""
    writer = session.writer
    transport = writer.transport
    # The socket's descriptor, looked up once: each use below first checks
    # that the transport is not closing (a closed one's number may be reused).
    fd = _fd(transport)
    try:
        run: list[bytes] = []
        for segment in segments:
            if isinstance(segment, bytes):
                run.append(segment)
                if len(run) >= _IOV_MAX:
                    _write_run(transport, fd, run)
                    run = []
                continue
            if run:
                _write_run(transport, fd, run)
                run = []
            if transport.get_write_buffer_size() > _HIGH_WATER:
                await session.drain()
            sent = _sendfile_now(transport, fd, segment)
            if sent < segment.count:
                rest = Sendable(segment.file, segment.offset + sent, segment.count - sent)
                await session.drain()
                sent += await _sendfile(session, rest)
            if sent != segment.count:
                log.error("FETCH: a message file gave %d of %d octets", sent, segment.count)
                raise Closed
        if run:
            _write_run(transport, fd, run)
        await session.drain()
    finally:
        for segment in segments:
            if isinstance(segment, Sendable):
                segment.file.close()


def _write_run(transport: asyncio.WriteTransport, fd: int, run: list[bytes]) -> None:
    """``run`` written in order: straight to the socket while the transport
    holds nothing, the rest (joined once) to the transport."""
    if transport.is_closing():
        raise Closed
    sent = 0
    if not transport.get_write_buffer_size():
        try:
            sent = os.writev(fd, run)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            raise Closed from exc
    if sent == 0:
        transport.write(b"".join(run))
        return
    for i, piece in enumerate(run):
        if sent < len(piece):
            transport.write(b"".join([piece[sent:], *run[i + 1 :]]))
            return
        sent -= len(piece)


def _sendfile_now(transport: asyncio.WriteTransport, fd: int, segment: Sendable) -> int:
    """The octets of ``segment`` the socket takes now without waiting (none
    while the transport still holds octets of its own)."""
    if transport.is_closing():
        raise Closed
    if transport.get_write_buffer_size():
        return 0
    src = segment.file.fileno()
    sent = 0
    while sent < segment.count:
        try:
            n = os.sendfile(fd, src, segment.offset + sent, segment.count - sent)
        except (BlockingIOError, InterruptedError):
            break
        except OSError as exc:
            raise Closed from exc
        if n == 0:  # the file is shorter than its record says
            break
        sent += n
    return sent


def _fd(transport: asyncio.WriteTransport) -> int:
    return int(transport.get_extra_info("socket").fileno())


async def _sendfile(session: Session, segment: Sendable) -> int:
    """``segment`` sent the transport's way, a step at a time: a step the
    client does not take within the session's write timeout ends the
    connection (:mod:`peerd.services.stall`; cancelled, not aborted under
    it: an abort in mid-sendfile would leave the loop waiting on a closed
    socket)."""
    loop = asyncio.get_running_loop()
    transport = session.writer.transport
    sent = 0
    while sent < segment.count:
        if transport.is_closing():
            raise Closed
        step = min(segment.count - sent, _SENDFILE_STEP)
        # fallback=True: where the transport cannot sendfile(2) (TLS), asyncio
        # reads the file in chunks and writes them (RFC 3501 4.3: the literal's
        # octets follow its CRLF whatever carries them).
        moving = loop.sendfile(transport, segment.file, segment.offset + sent, step, fallback=True)
        seconds = max(session.write_timeout(), 1.0)
        try:
            n = await asyncio.wait_for(moving, seconds)
        except TimeoutError:
            log.info("FETCH: the client read nothing for %.0f s; connection aborted", seconds)
            transport.abort()
            raise Closed from None
        sent += n
        if n < step:  # the file is shorter than its record says
            break
    return sent


def render_group(
    targets: Sequence[tuple[int, Record]],
    start: int,
    items: Sequence[FetchAtt],
    reader: Reader,
    structures: StructureCache,
    opener: Opener | None = None,
    *,
    count: int = _FETCH_GROUP,
    direct: bool = False,
) -> tuple[list[bytes | Sendable], list[int], int]:
    """The FETCH responses of the group that begins at ``targets[start]`` (at
    most ``count`` messages, :func:`group_size`), the
    UIDs whose bytes could not be read (missing or not matching their GUID:
    never served; those are left out), and where the next group begins.
    With ``opener``, large whole-message literals are :class:`Sendable`
    (open files the caller closes); ``direct`` (for :func:`send_direct`):
    from :data:`_DIRECT_SPAN_FROM` octets, and the pieces left apart. Runs
    in a worker thread."""
    span_from = (_DIRECT_SPAN_FROM if direct else _SPAN_FROM) if opener is not None else None
    renderer = FetchRenderer(items, span_from=span_from)
    out: list[Segment | Sendable] = []
    unreadable: list[int] = []
    size = 0
    end = start
    group = targets[start : start + count]
    renderer.prefetch((record.guid for _, record in group), structures)
    try:
        for seq, record in group:
            end += 1
            mark = len(out)
            spans = renderer.spans
            try:
                size += renderer.message(seq, record, reader, structures, out)
                if opener is not None and renderer.spans != spans:
                    size += _open_spans(seq, record, items, reader, structures, opener, out, mark)
            except Corrupt as exc:
                log.warning("FETCH of UID %d: %s", record.uid, exc.message)
                unreadable.append(record.uid)
                _close(out[mark:])
                del out[mark:]
            except OSError as exc:  # the spool itself in trouble (EIO, EACCES)
                log.error("FETCH of UID %d: the spool could not be read: %s", record.uid, exc)
                unreadable.append(record.uid)
                _close(out[mark:])
                del out[mark:]
            if size >= _FETCH_BYTES:
                break
    except BaseException:
        _close(out)
        raise
    if opener is None:  # octets only
        return [b"".join(cast(list[bytes], out))], unreadable, end
    if direct:
        assert not any(isinstance(s, Span) for s in out)  # every Span was opened
        return cast(list[bytes | Sendable], out), unreadable, end
    return _joined(out), unreadable, end


def group_size(items: Sequence[FetchAtt]) -> int:
    """How many messages a group of this FETCH holds at most."""
    if all(att in _NO_OCTETS or att in _STRUCTURES for att in items):
        return _RECORDS_GROUP
    return _FETCH_GROUP


def _open_spans(
    seq: int,
    record: Record,
    items: Sequence[FetchAtt],
    reader: Reader,
    structures: StructureCache,
    opener: Opener,
    out: list[Segment | Sendable],
    mark: int,
) -> int:
    """Put each :class:`Span` of the message rendered at ``out[mark:]`` as a
    :class:`Sendable` (the message's file, open and verified); the octets
    it adds to memory. A file whose size is not the record's is copied:
    the message is rendered again with its octets in line."""
    for i in range(mark, len(out)):
        span = out[i]
        if not isinstance(span, Span):
            continue
        file, size = opener(span.guid)
        out[i] = Sendable(file, span.offset, span.count)
        if size != span.size:  # the record's size is not the file's: copy
            _close(out[mark:])
            del out[mark:]
            return FetchRenderer(items).message(seq, record, reader, structures, out)
    return 0


def _joined(out: Sequence[Segment | Sendable]) -> list[bytes | Sendable]:
    """``out`` with each run of octets joined: one write for each."""
    joined: list[bytes | Sendable] = []
    run: list[bytes] = []
    for segment in out:
        if isinstance(segment, bytes):
            run.append(segment)
            continue
        assert isinstance(segment, Sendable), segment  # every Span was opened
        if run:
            joined.append(b"".join(run))
            run = []
        joined.append(segment)
    if run:
        joined.append(b"".join(run))
    return joined


def _discard(rendering: asyncio.Future[tuple[list[bytes | Sendable], list[int], int]]) -> None:
    """A group rendered for a FETCH that ended before sending it: its files
    are closed once its thread is done (a thread cannot be stopped)."""

    def done(future: asyncio.Future[tuple[list[bytes | Sendable], list[int], int]]) -> None:
        if not future.cancelled() and future.exception() is None:
            _close(future.result()[0])

    rendering.add_done_callback(done)


def _close(segments: Sequence[object]) -> None:
    for segment in segments:
        if isinstance(segment, Sendable):
            segment.file.close()


HANDLERS: Final[dict[type[c.Command], Handler]] = {c.Fetch: fetch}
