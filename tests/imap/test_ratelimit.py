"""The command rate limit, given the time: run, refuse with [LIMIT], close."""

from __future__ import annotations

from peerd.protocols.imap.ratelimit import CommandRate, Verdict


def test_budget_per_window_then_refuse_then_close() -> None:
    rate = CommandRate(3)
    assert [rate.check(10.0) for _ in range(3)] == [Verdict.RUN] * 3
    assert rate.check(10.1) is Verdict.REFUSE
    assert abs(rate.retry_after(10.1) - 0.9) < 1e-9  # the window began at 10.0
    assert [rate.check(10.2) for _ in range(2)] == [Verdict.REFUSE] * 2
    # Refused as often as the budget and still sending: twice the rate.
    assert rate.check(10.3) is Verdict.CLOSE


def test_a_new_window_restores_the_budget() -> None:
    rate = CommandRate(2)
    assert [rate.check(0.0), rate.check(0.5), rate.check(0.9)] == [
        Verdict.RUN,
        Verdict.RUN,
        Verdict.REFUSE,
    ]
    assert rate.check(1.0) is Verdict.RUN  # the window began at 0.0
    assert rate.check(1.5) is Verdict.RUN
    assert rate.check(1.9) is Verdict.REFUSE


def test_exempt_commands_run_but_count() -> None:
    rate = CommandRate(1)
    assert rate.check(0.0) is Verdict.RUN
    assert rate.check(0.1, exempt=True) is Verdict.RUN  # LOGOUT always runs
    assert rate.check(0.2) is Verdict.REFUSE


def test_zero_turns_the_limit_off() -> None:
    rate = CommandRate(0)
    assert all(rate.check(0.0) is Verdict.RUN for _ in range(10_000))
