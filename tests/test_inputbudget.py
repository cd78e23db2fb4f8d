"""The node's input budget in-process (peerd.node.inputbudget): room taken,
waited for in order, per-account shares, bounded waits, and nothing left
held however a holder ends."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from peerd.node.errormap import http_status, imap_code, lmtp_reply
from peerd.node.inputbudget import UNCOUNTED, AccountNoRoom, Hold, InputBudget, NoRoom

MiB = 1 << 20
T = TypeVar("T")


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(scenario(), 10)

    return asyncio.run(bounded())


async def turns(n: int = 5) -> None:
    """Let the loop run the tasks that are ready."""
    for _ in range(n):
        await asyncio.sleep(0)


def test_the_first_octets_of_a_command_are_free_and_release_gives_them_back() -> None:
    async def scenario() -> None:
        budget = InputBudget(MiB)
        hold = budget.hold("alice")
        await hold.take(UNCOUNTED)
        assert budget.used == 0
        await hold.take(10)
        assert (budget.used, hold.reserved, budget.held_by("alice")) == (10, 10, 10)
        hold.release()
        hold.release()  # twice: nothing more
        assert (budget.used, hold.reserved, budget.held_by("alice")) == (0, 0, 0)
        await hold.take(UNCOUNTED)  # the next command's free octets again
        assert budget.used == 0
        await hold.take(100)
        hold.give_back(60)
        assert budget.used == 40
        hold.give_back(1000)  # never more than held
        assert budget.used == 0

    run(scenario)


def test_a_waiter_gets_room_when_it_frees_and_waiters_are_served_in_order() -> None:
    async def scenario() -> None:
        budget = InputBudget(4 * MiB, wait=5)
        first = budget.hold("a")
        await first.take(UNCOUNTED + 3 * MiB)
        order: list[str] = []

        async def want(name: str, size: int) -> Hold:
            hold = budget.hold(name)
            await hold.take(UNCOUNTED + size)
            order.append(name)
            return hold

        big = asyncio.create_task(want("big", 2 * MiB))
        await turns()
        small = asyncio.create_task(want("small", MiB // 2))
        await turns()
        # 1 MiB is free: the small one would fit, but does not overtake the big one.
        assert order == [] and budget.status().waiting == 2
        first.release()
        await asyncio.gather(big, small)
        assert order == ["big", "small"]
        assert budget.used == 2 * MiB + MiB // 2 and budget.peak == 3 * MiB
        assert budget.waits == 2 and budget.refusals == 0

    run(scenario)


def test_an_account_over_its_share_waits_for_itself_not_in_front_of_others() -> None:
    async def scenario() -> None:
        budget = InputBudget(8 * MiB, per_key=2 * MiB, wait=0.2)
        greedy = [budget.hold("greedy") for _ in range(3)]
        await greedy[0].take(UNCOUNTED + 2 * MiB)
        blocked = asyncio.create_task(greedy[1].take(UNCOUNTED + MiB))
        await turns()
        other = budget.hold("other")
        await other.take(UNCOUNTED + 2 * MiB)  # not behind greedy's waiter
        assert budget.used == 4 * MiB
        with pytest.raises(AccountNoRoom, match="at most 2097152 at once"):
            await blocked
        assert imap_code(AccountNoRoom("x")) == ("NO", "LIMIT")
        # Its own room freeing lets it in.
        later = asyncio.create_task(greedy[2].take(UNCOUNTED + MiB))
        await turns()
        assert not later.done()
        greedy[0].release()
        await later
        assert budget.held_by("greedy") == MiB

    run(scenario)


def test_a_wait_is_bounded_and_two_holders_cannot_wait_for_each_other() -> None:
    async def scenario() -> None:
        budget = InputBudget(4 * MiB, wait=0.3)
        one, two = budget.hold("one"), budget.hold("two")
        await one.take(UNCOUNTED + 2 * MiB)
        await two.take(UNCOUNTED + 2 * MiB)
        # Each wants more than the other leaves: a deadlock without the bound.
        first = asyncio.create_task(one.take(MiB))
        await turns()
        second = asyncio.create_task(two.take(MiB))
        done = asyncio.create_task(asyncio.wait_for(first, 5))
        with pytest.raises(NoRoom, match="server busy"):
            await done
        # The refused command's room went back with the refusal: the other goes on.
        assert one.reserved == 0
        await second
        one.release()  # what the session does then: nothing more to give back
        assert budget.used == 3 * MiB and budget.refusals == 1
        assert imap_code(NoRoom("x")) == ("NO", "UNAVAILABLE")
        assert lmtp_reply(NoRoom("x")).startswith("452 4.3.1")
        assert http_status(NoRoom("x")) == 503

    run(scenario)


def test_what_could_never_fit_is_refused_at_once() -> None:
    async def scenario() -> None:
        budget = InputBudget(4 * MiB, per_key=2 * MiB, wait=30)
        with pytest.raises(NoRoom, match="more than this server ever holds"):
            await budget.hold().take(UNCOUNTED + 4 * MiB + 1)
        with pytest.raises(NoRoom):
            await budget.hold("alice").take(UNCOUNTED + 2 * MiB + 1)
        assert budget.used == 0 and budget.refusals == 2

    run(scenario)


def test_a_holder_cancelled_while_waiting_leaves_nothing_behind() -> None:
    async def scenario() -> None:
        budget = InputBudget(2 * MiB, wait=30)
        holder = budget.hold("a")
        await holder.take(UNCOUNTED + 2 * MiB)
        waiting = [budget.hold(f"w{n}") for n in range(3)]
        tasks = [asyncio.create_task(h.take(UNCOUNTED + MiB)) for h in waiting]
        await turns()
        tasks[0].cancel()  # the connection went while it waited
        await turns()
        assert budget.status().waiting == 2
        holder.release()
        await asyncio.gather(tasks[1], tasks[2])
        assert budget.used == 2 * MiB
        # Cancelled just as it was granted: the hold has it, release gives it back.
        for hold in waiting:
            hold.release()
        assert budget.used == 0 and budget.status().waiting == 0

    run(scenario)


def test_waits_and_refusals_are_counted_and_warned_of_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    counted: Counter[str] = Counter()

    async def scenario() -> None:
        budget = InputBudget(MiB, wait=0.05, count=lambda name: counted.update([name]))
        full = budget.hold("a")
        await full.take(UNCOUNTED + MiB)
        for _ in range(3):
            with pytest.raises(NoRoom):
                await budget.hold("b").take(UNCOUNTED + 1)

    with caplog.at_level(logging.WARNING, logger="peerd.node.inputbudget"):
        run(scenario)
    assert counted == {"input_memory_waits": 3, "input_memory_refusals": 3}
    warnings = [r for r in caplog.records if "waits" in r.getMessage()]
    assert len(warnings) == 1
    assert "input_memory: 1048576 of 1048576 octets in use" in warnings[0].getMessage()


def test_what_a_login_holds_moves_to_its_account() -> None:
    async def scenario() -> None:
        budget = InputBudget(MiB)
        hold = budget.hold()
        await hold.take(UNCOUNTED + 100)  # a login's literal past the free octets
        hold.rekey("alice")
        assert budget.held_by("alice") == 100 and budget.used == 100
        hold.rekey("bob")
        assert budget.held_by("alice") == 0 and budget.held_by("bob") == 100
        hold.release()
        assert budget.held_by("bob") == 0 and budget.used == 0

    run(scenario)


def test_a_wait_stops_when_the_connection_ends() -> None:
    async def scenario() -> None:
        budget = InputBudget(MiB, wait=30)
        full = budget.hold("a")
        await full.take(UNCOUNTED + MiB)
        hold = budget.hold("b")
        assert not hold.try_take(UNCOUNTED + 1)
        assert hold.try_take(UNCOUNTED)  # the free octets need no room
        ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiting = asyncio.create_task(hold.take_before(10, lambda: ended))
        await turns()
        assert budget.status().waiting == 1
        ended.set_result(None)  # the client went away
        assert await waiting is False
        assert budget.status().waiting == 0 and budget.refusals == 0 and hold.reserved == 0

        def never() -> asyncio.Future[None]:
            raise AssertionError("no wait, so nothing to watch")

        full.release()
        assert await hold.take_before(10, never) is True and budget.used == 10

    run(scenario)


def test_one_http_request_never_waits_for_more_than_the_whole_budget() -> None:
    # A compressed sync request holds its bytes and, once inflated, theirs:
    # with input_memory equal to sync_max_request, one that compresses
    # badly wanted more than the budget and was refused (503) at every retry.
    from aiohttp.test_utils import make_mocked_request

    from peerd.node.httplimits import body_room, body_room_trim

    async def scenario() -> None:
        budget = InputBudget(4 * MiB, wait=0.2)
        request = make_mocked_request("POST", "/sync/v1/apply")
        await body_room(request, budget, 3 * MiB)  # the compressed bytes
        await body_room(request, budget, 3 * MiB)  # inflated: capped at what is left
        assert budget.used == 4 * MiB
        other = make_mocked_request("POST", "/sync/v1/apply")
        with pytest.raises(NoRoom):
            await body_room(other, budget, MiB)  # the budget is still a bound for others

        chunked = make_mocked_request("POST", "/sync/v1/upload")
        fresh = InputBudget(4 * MiB, wait=0.2)
        await body_room(chunked, fresh, 4 * MiB)  # no Content-Length: the most it may be
        body_room_trim(chunked, MiB)  # what it turned out to be
        assert fresh.used == MiB

    run(scenario)
