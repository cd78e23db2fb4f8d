"""The LMTP protocol front on its own: pipelined replies and the 421 at shutdown.

The front (:mod:`peerd.services.lmtp.front`, over the core) runs on a real loopback socket with a
backend whose recipient check waits on a gate, so a test decides when a
pipelined command's reply may be due. Both event loops a front runs on are
covered: asyncio's (the daemon, ``workers = 0``) and uvloop's (LMTP workers).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvloop

from engine.spool import Spool
from peerd.services.lmtp.backend import Message
from peerd.services.lmtp.front import FrontSettings, LmtpHandler, serve_lmtp

SETTINGS = FrontSettings(
    hostname="front.test",
    local_domains=frozenset({"example.test"}),
    max_message_size=1 << 20,
    max_recipients=10,
    max_line=1000,
)


class GatedBackend:
    """Accepts every recipient once ``gate`` opens; delivers nothing."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.asked = asyncio.Event()
        self.checks = 0

    async def check_rcpt(self, address: str) -> str | None:
        self.checks += 1
        self.asked.set()
        await self.gate.wait()
        return None

    async def deliver(self, message: Message) -> list[str]:
        return ["250 2.0.0 OK"] * len(message.recipients)


Runner = Callable[[Coroutine[Any, Any, None]], None]


def _asyncio(main: Coroutine[Any, Any, None]) -> None:
    asyncio.run(main)


def _uvloop(main: Coroutine[Any, Any, None]) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


LOOPS = pytest.mark.parametrize("run", [_asyncio, _uvloop], ids=["asyncio", "uvloop"])


async def _reply(reader: asyncio.StreamReader) -> bytes:
    while True:
        line = await asyncio.wait_for(reader.readline(), 10)
        assert line, "the server closed the connection"
        if line[3:4] != b"-":
            return line


@dataclass
class Session:
    handler: LmtpHandler
    backend: GatedBackend
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


@contextlib.asynccontextmanager
async def _session(tmp_path: Path, settings: FrontSettings = SETTINGS) -> AsyncIterator[Session]:
    """A front on a loopback port and one client past LHLO; all closed after."""
    backend = GatedBackend()
    handler = LmtpHandler(settings, Spool(tmp_path / "spool"), backend)
    listener = socket.create_server(("127.0.0.1", 0))
    server = await serve_lmtp(handler, sock=listener)
    reader, writer = await asyncio.open_connection(*listener.getsockname()[:2])
    try:
        assert (await _reply(reader)).startswith(b"220")
        writer.write(b"LHLO client.test\r\n")
        assert (await _reply(reader)).startswith(b"250")
        yield Session(handler, backend, reader, writer)
    finally:
        backend.gate.set()
        writer.close()
        server.close()
        await server.wait_closed()


@LOOPS
def test_a_pipelined_250_waits_for_the_next_reply(tmp_path: Path, run: Runner) -> None:
    """RFC 2920 3.1: MAIL's 250 is held while RCPT, already read, is being
    answered, and both arrive once RCPT's reply is due; nothing is lost."""

    async def main() -> None:
        async with _session(tmp_path) as s:
            s.writer.write(b"MAIL FROM:<s@example.test>\r\nRCPT TO:<r@example.test>\r\n")
            await asyncio.wait_for(s.backend.asked.wait(), 10)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(s.reader.readline(), 0.3)  # MAIL's 250 is held
            s.backend.gate.set()
            assert (await _reply(s.reader)).startswith(b"250")  # MAIL
            assert (await _reply(s.reader)).startswith(b"250")  # RCPT
            s.writer.write(b"QUIT\r\n")
            assert (await _reply(s.reader)).startswith(b"221")

    run(main())


@LOOPS
def test_a_lone_command_is_answered_at_once(tmp_path: Path, run: Runner) -> None:
    """With no command behind it in the input, a 250 is never held."""

    async def main() -> None:
        async with _session(tmp_path) as s:
            s.backend.gate.set()
            s.writer.write(b"MAIL FROM:<s@example.test>\r\n")
            assert (await _reply(s.reader)).startswith(b"250")
            s.writer.write(b"NOOP\r\n")
            assert (await _reply(s.reader)).startswith(b"250")

    run(main())


@LOOPS
def test_shutdown_sends_the_held_replies_before_its_421(tmp_path: Path, run: Runner) -> None:
    """A session stopped while a reply is held gets that reply, then 421
    (RFC 5321 3.8), then the close: the 421 is written before goodbye returns,
    on either loop."""

    async def main() -> None:
        async with _session(tmp_path) as s:
            s.writer.write(b"MAIL FROM:<s@example.test>\r\nRCPT TO:<r@example.test>\r\n")
            await asyncio.wait_for(s.backend.asked.wait(), 10)
            await s.handler.goodbye(grace=1.0)
            assert (await _reply(s.reader)).startswith(b"250")  # MAIL, held until now
            assert (await _reply(s.reader)).startswith(b"421 4.3.2")
            assert await asyncio.wait_for(s.reader.read(), 10) == b""
            assert not s.handler.sessions

    run(main())


def test_a_recipient_accepted_while_ownership_changed_is_asked_again(tmp_path: Path) -> None:
    """The front remembers a "yes" for RCPT_CACHE_SECONDS, and forgets all of
    them when an ownership row changes. A "yes" whose check was out when
    the forget came may predate the change: it is not remembered."""

    async def main() -> None:
        async with _session(tmp_path) as s:
            s.writer.write(b"MAIL FROM:<s@example.test>\r\n")
            assert (await _reply(s.reader)).startswith(b"250")
            s.writer.write(b"RCPT TO:<r@example.test>\r\n")
            await asyncio.wait_for(s.backend.asked.wait(), 10)
            s.handler.forget_recipients()  # while the check is out
            s.backend.gate.set()
            assert (await _reply(s.reader)).startswith(b"250")
            s.writer.write(b"RCPT TO:<r@example.test>\r\n")
            assert (await _reply(s.reader)).startswith(b"250")
            assert s.backend.checks == 2, "the stale yes was remembered"
            s.writer.write(b"RCPT TO:<r@example.test>\r\n")
            assert (await _reply(s.reader)).startswith(b"250")
            assert s.backend.checks == 2, "a fresh yes was not remembered"
            s.handler.forget_recipients()
            s.writer.write(b"RCPT TO:<r@example.test>\r\n")
            assert (await _reply(s.reader)).startswith(b"250")
            assert s.backend.checks == 3, "forget_recipients kept a yes"

    asyncio.run(main())


@LOOPS
def test_an_idle_session_is_told_421_and_closed(tmp_path: Path, run: Runner) -> None:
    """RFC 5321 4.5.3.2.7 gives a server five minutes; here a fraction of a
    second, the same code path. A session waiting on the backend is busy,
    not idle."""

    async def main() -> None:
        async with _session(tmp_path, dataclasses.replace(SETTINGS, idle_timeout=0.3)) as s:
            s.writer.write(b"MAIL FROM:<s@example.test>\r\nRCPT TO:<r@example.test>\r\n")
            await asyncio.wait_for(s.backend.asked.wait(), 10)
            await asyncio.sleep(1.0)  # the check is out: busy, so no timeout
            s.backend.gate.set()
            assert (await _reply(s.reader)).startswith(b"250")  # MAIL
            assert (await _reply(s.reader)).startswith(b"250")  # RCPT
            assert (await _reply(s.reader)).startswith(b"421 4.4.2")
            assert await asyncio.wait_for(s.reader.read(), 10) == b""

    run(main())
