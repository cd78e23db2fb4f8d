"""ESORT's answer (RFC 5267 3.2) and SEARCHRES's saved result (RFC 5182 2.4),
checked against the rules written plainly."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from peerd.protocols.imap.search import esort_response, saved_result

ORDERS = st.lists(st.integers(1, 60), unique=True, max_size=40)


def expand(text: bytes) -> list[int]:
    out: list[int] = []
    for piece in text.split(b","):
        lo, _, hi = piece.partition(b":")
        first, last = int(lo), int(hi or lo)
        assert first <= last  # a range only ascends
        out.extend(range(first, last + 1))
    return out


@given(ORDERS)
def test_all_lists_the_messages_in_sort_order(ordered: list[int]) -> None:
    line = esort_response("t", False, ("MIN", "MAX", "ALL", "COUNT"), ordered)
    assert line.startswith(b'* ESEARCH (TAG "t")') and line.endswith(b"\r\n")
    words = line[len(b'* ESEARCH (TAG "t")') :].split()
    items = dict(zip(words[::2], words[1::2], strict=True))
    assert int(items[b"COUNT"]) == len(ordered)
    if ordered:
        assert int(items[b"MIN"]) == ordered[0] and int(items[b"MAX"]) == ordered[-1]
        assert expand(items[b"ALL"]) == ordered
        # Ranges are as long as they can be: no two pieces would join.
        pieces = items[b"ALL"].split(b",")
        ends = [int(p.split(b":")[-1]) for p in pieces]
        starts = [int(p.split(b":")[0]) for p in pieces]
        assert all(end + 1 != start for end, start in zip(ends, starts[1:], strict=False))
    else:
        assert set(items) == {b"COUNT"}


@given(ORDERS, st.sets(st.sampled_from(["MIN", "MAX", "ALL", "COUNT"])))
def test_saved_result_follows_rfc_5182_2_4(uids: list[int], options: set[str]) -> None:
    saved = saved_result(("SAVE", *sorted(options)), uids)
    if not uids or not options or options & {"ALL", "COUNT"}:
        assert saved == frozenset(uids)
    else:
        wanted = set()
        if "MIN" in options:
            wanted.add(uids[0])
        if "MAX" in options:
            wanted.add(uids[-1])
        assert saved == wanted
