"""The directory's read-through cache: one question per key at a time, answers
kept for the TTL (a "not there" too), failures never kept, the size bounded."""

from __future__ import annotations

import asyncio

import pytest

from peerd.directory.cache import ReadThrough


class Source:
    """A source that counts its questions and answers once released."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.release = asyncio.Event()
        self.fail = False

    async def __call__(self, key: str) -> str | None:
        self.asked.append(key)
        await self.release.wait()
        if self.fail:
            raise OSError("directory away")
        return None if key == "nobody" else key.upper()


def test_concurrent_misses_ask_once_and_answers_live_for_the_ttl() -> None:
    async def run() -> None:
        now = [0.0]
        source = Source()
        cache: ReadThrough[str, str | None] = ReadThrough(source, 2.0, clock=lambda: now[0])
        waiting = [asyncio.create_task(cache.get("ann")) for _ in range(5)]
        await asyncio.sleep(0)
        source.release.set()
        assert await asyncio.gather(*waiting) == ["ANN"] * 5
        assert source.asked == ["ann"]
        now[0] = 1.9
        assert await cache.get("ann") == "ANN" and source.asked == ["ann"]
        assert await cache.get("nobody") is None
        assert await cache.get("nobody") is None
        assert source.asked == ["ann", "nobody"]  # "not there" is kept too
        now[0] = 2.0  # the TTL is over: asked again
        assert await cache.get("ann") == "ANN"
        assert source.asked == ["ann", "nobody", "ann"]
        assert (cache.hits, cache.misses) == (2, 3)

    asyncio.run(run())


def test_a_failure_is_not_kept_and_the_size_is_bounded() -> None:
    async def run() -> None:
        source = Source()
        source.release.set()
        source.fail = True
        cache: ReadThrough[str, str | None] = ReadThrough(source, 60.0, size=2)
        with pytest.raises(OSError):
            await cache.get("ann")
        source.fail = False
        assert await cache.get("ann") == "ANN"
        assert source.asked == ["ann", "ann"]
        await cache.get("bob")
        await cache.get("cat")
        assert len(cache) == 2
        await cache.get("ann")  # the oldest went first
        assert source.asked[-1] == "ann"

    asyncio.run(run())


def test_ttl_zero_keeps_nothing() -> None:
    async def run() -> None:
        source = Source()
        source.release.set()
        cache: ReadThrough[str, str | None] = ReadThrough(source, 0.0)
        await cache.get("ann")
        await cache.get("ann")
        assert source.asked == ["ann", "ann"] and len(cache) == 0

    asyncio.run(run())
