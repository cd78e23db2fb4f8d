"""The ManageSieve service's room in the input budget, in-process: a script
holds its room until its command is answered, not only until it is read."""

from __future__ import annotations

import asyncio
import base64
from types import SimpleNamespace
from typing import Any, cast

from peerd.node.config import parse_config
from peerd.node.inputbudget import UNCOUNTED, InputBudget
from peerd.node.node import AuthResult
from peerd.node.node import Node as Node_
from peerd.services.managesieve import SieveSession

MiB = 1 << 20


def test_a_script_holds_its_room_while_its_putscript_is_written() -> None:
    script = b"keep;\r\n" + b"# a comment that takes room\r\n" * 8000  # past the free octets
    assert len(script) > UNCOUNTED

    async def scenario() -> tuple[int, int]:
        budget = InputBudget(16 * MiB, wait=1)
        held_while_written: list[int] = []

        async def authenticate(*_: Any) -> AuthResult:
            return AuthResult(ok=True, account="alice")

        async def write_owned(account: str, write: Any) -> None:
            # The store's writer runs the PUTSCRIPT now: the script is still
            # held in memory, so its room must still be held.
            held_while_written.append(budget.used)

        node = SimpleNamespace(
            config=parse_config({"node": {"name": "alpha"}}),
            input_budget=budget,
            authenticate=authenticate,
            write_owned=write_owned,
        )

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            session = SieveSession(cast(Node_, node), reader, writer, None)
            try:
                await session.run()
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)

        async def reply() -> bytes:
            while True:
                line = await reader.readline()
                assert line, "the session ended"
                if line.startswith((b"OK", b"NO", b"BYE")):
                    return line

        await reply()  # the greeting's capabilities, then OK
        plain = base64.b64encode(b"\0alice\0secret").decode()
        writer.write(f'AUTHENTICATE "PLAIN" "{plain}"\r\n'.encode())
        assert (await reply()).startswith(b"OK")
        writer.write(f'PUTSCRIPT "big" {{{len(script)}+}}\r\n'.encode() + script + b"\r\n")
        answer = await reply()
        assert answer.startswith(b"OK"), answer
        writer.close()
        for _ in range(500):  # the session gives its room back once the reply is out
            if budget.used == 0:
                break
            await asyncio.sleep(0.01)
        server.close()
        await server.wait_closed()
        return held_while_written[0], budget.used

    during, after = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert during >= len(script) - UNCOUNTED
    assert after == 0
