"""The password-hashing queue under a guessing flood (issue 9 item 6), on the wire.

A real daemon, a flood of wrong IMAP logins from 127.0.0.2 and 127.0.0.3 and a
real user's login from 127.0.0.1: the real login is hashed after at most one
guess per flooding address (round-robin between client addresses), not after
every guess queued before it; and guesses queued from an address that went
over the throttle while they waited are refused without being hashed.
"""

from __future__ import annotations

import re
import socket
import threading
import time
import urllib.request
from collections.abc import Callable

from engine.passwords import DEFAULT_LN
from tests.conftest import LoneNode

NodeFactory = Callable[..., LoneNode]


def _login(node: LoneNode, source: str, user: str, password: str, answers: list[float]) -> bytes:
    """One LOGIN on a fresh connection from ``source``; appends when its answer came."""
    with socket.create_connection(
        ("127.0.0.1", node.port("imap")), timeout=120, source_address=(source, 0)
    ) as raw:
        reader = raw.makefile("rb")
        reader.readline()
        raw.sendall(f"a LOGIN {user} {password}\r\n".encode())
        answer = reader.readline()
        answers.append(time.monotonic())
        reader.close()
        return answer


def _flood(
    node: LoneNode, sources: list[str], per_source: int
) -> tuple[list[threading.Thread], list[float]]:
    answers: list[float] = []
    threads = [
        threading.Thread(target=_login, args=(node, source, "victim", f"guess{n}", answers))
        for n in range(per_source)
        for source in sources
    ]
    for thread in threads:
        thread.start()
    return threads, answers


def _metric(node: LoneNode, name: str) -> int:
    text = urllib.request.urlopen(f"{node.api}/metrics", timeout=10).read().decode()
    found = re.search(rf"^peerd_{name}(?:_total)? (\d+)", text, re.M)
    return int(found.group(1)) if found else 0


def test_a_real_login_is_not_queued_behind_a_guessing_flood(lone_node: NodeFactory) -> None:
    # One hash at a time and a throttle too lax to step in: only the order
    # in which queued checks are served decides how long the real user waits.
    node = lone_node(
        {
            "auth": {
                "max_concurrent_hashes": 1,
                "max_failures_per_account": 1000,
                "max_failures_per_ip": 1000,
                "scrypt_cost": DEFAULT_LN,  # checks slow enough to queue
            }
        }
    )
    node.add_account("user")
    node.add_account("victim")
    threads, flood_answers = _flood(node, ["127.0.0.2", "127.0.0.3"], 12)
    try:
        time.sleep(0.3)  # the 24 guesses are queued (each check takes ~0.1 s or more)
        assert _login(node, "127.0.0.1", "user", "secret", []).startswith(b"a OK")
    finally:
        for thread in threads:
            thread.join(120)
    assert len(flood_answers) == 24
    # The daemon logs each check as it ends: count the guesses checked
    # before and after the real login.
    log = (node.workdir / f"{node.name}.log").read_text()
    lines = re.findall(r"login (?:ok|failed): rip=\S+ proto=imap user=\"(\w+)\"", log)
    assert lines.count("victim") == 24 and lines.count("user") == 1
    before = lines.index("user")
    # Served first come, first served, the real login waited for all 24.
    # Round-robin between addresses, it waits for the guesses checked while
    # it was not yet sent, the one in progress and one per flooding address.
    assert before <= 10, lines
    assert 24 - before >= 14, lines


def test_guesses_queued_past_the_throttle_are_not_hashed(lone_node: NodeFactory) -> None:
    node = lone_node(
        {
            "auth": {
                "max_concurrent_hashes": 1,
                "max_failures_per_account": 1000,
                "max_failures_per_ip": 3,
                "scrypt_cost": DEFAULT_LN,
            }
        }
    )
    node.add_account("victim")
    threads, answers = _flood(node, ["127.0.0.2"], 20)
    for thread in threads:
        thread.join(120)
    assert len(answers) == 20
    # Three wrong guesses were checked; the other 17 were refused unchecked,
    # whether they arrived after the third failure or were queued before it.
    assert _metric(node, "auth_throttled") == 17
    assert _metric(node, "auth_failures") == 20
    log = (node.workdir / f"{node.name}.log").read_text()
    assert log.count("login failed: rip=127.0.0.2 proto=imap") == 20
    assert "Traceback" not in log


def test_fair_slots_serve_the_least_served_source_first_and_survive_cancellation() -> None:
    import asyncio

    from peerd.node.fairqueue import FairSlots

    async def scenario() -> list[str]:
        slots = FairSlots(2)
        order: list[str] = []
        gates: dict[str, asyncio.Event] = {}

        async def hold(name: str, source: str) -> None:
            async with slots.slot(source):
                order.append(name)
                gates[name] = asyncio.Event()
                await gates[name].wait()

        tasks = [asyncio.create_task(hold(f"flood{n}", "10.0.0.9")) for n in range(6)]
        await asyncio.sleep(0)
        cancelled = asyncio.create_task(hold("gone", "10.0.0.7"))
        user = asyncio.create_task(hold("user", "10.0.0.1"))
        await asyncio.sleep(0)
        assert order == ["flood0", "flood1"]
        cancelled.cancel()
        await asyncio.sleep(0)
        gates["flood0"].set()
        await asyncio.sleep(0.01)
        # The flood holds one slot, the user none: the user goes first, and
        # the cancelled waiter took nothing.
        assert order == ["flood0", "flood1", "user"]
        for _ in range(6):
            for gate in list(gates.values()):
                gate.set()
            await asyncio.sleep(0.01)
        await asyncio.gather(*tasks, user)
        return order

    order = asyncio.run(scenario())
    assert order[:3] == ["flood0", "flood1", "user"] and len(order) == 7 and "gone" not in order
