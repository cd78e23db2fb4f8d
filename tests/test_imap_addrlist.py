"""The address-field splitter of ENVELOPE and the SORT keys answers as
``email.utils.getaddresses`` does, on its fast path and off it."""

from __future__ import annotations

import email.utils

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerd.protocols.imap.addrlist import _PLAIN, getaddresses
from tests.example_counts import examples

ATOMS = ["a", "Bob", "x9", "=?utf-8?q?J=C3=B6rg?=", "o'neil", "a+b", "_", "{}", "~", "-"]
PIECES = [*ATOMS, ".", "@", " ", "  ", "\t", "<", ">", '"', "(", ")", ",", ":", ";", "[", "]", "\\"]


@pytest.mark.parametrize(
    ("value", "fast"),
    [
        ("alice@example.org", True),
        ("<alice@example.org>", True),
        ("Sender 5 <sender5@bench.test>", True),
        (" =?utf-8?q?J=C3=B6rg?= <j.r@x.example>\t", True),
        ("Bob  <bob@x>", False),  # two spaces: email.utils's own answer
        ('"Last, First" <a@b.c>', False),
        ("J.R. <jr@x>", False),
        ("a@b, c@d", False),
        ("Group: a@b, C <c@d>;", False),
        ("<@route:a@b>", False),
        ("bob (comment) <bob@x>", False),
        ("", False),
    ],
)
def test_the_fast_path_answers_as_email_utils(value: str, fast: bool) -> None:
    assert (_PLAIN.fullmatch(value) is not None) is fast
    assert getaddresses(value) == email.utils.getaddresses([value])


@settings(max_examples=examples(2000), deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=12).map("".join))
def test_any_field_is_split_as_email_utils_splits_it(value: str) -> None:
    assert getaddresses(value) == email.utils.getaddresses([value])


@settings(max_examples=examples(2000), deadline=None)
@given(
    st.lists(st.sampled_from(ATOMS), max_size=3).map(" ".join),
    st.lists(st.sampled_from(ATOMS), min_size=1, max_size=3).map(".".join),
    st.lists(st.sampled_from(ATOMS), min_size=1, max_size=3).map(".".join),
    st.sampled_from(["", " ", "\t", "  "]),
    st.booleans(),
)
def test_plain_mailboxes_are_split_as_email_utils_splits_them(
    name: str, local: str, domain: str, space: str, angle: bool
) -> None:
    value = f"{space}{name}{space}<{local}@{domain}>{space}" if angle else f"{local}@{domain}"
    assert getaddresses(value) == email.utils.getaddresses([value])
