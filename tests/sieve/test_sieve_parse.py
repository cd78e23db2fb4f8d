"""The Sieve parser and validator: RFC 5228 grammar, limits, require checks, hostile input."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerd.protocols.sieve import (
    ExtensionError,
    Limits,
    ScriptError,
    ScriptTooBig,
    SieveSyntaxError,
    ValidationError,
    compile_script,
    parse,
)
from peerd.protocols.sieve import program as p
from peerd.protocols.sieve import tree as t
from tests.example_counts import examples

# RFC 5228 section 9 (the "Full Example"), as printed.
RFC5228_EXAMPLE = (Path(__file__).parent / "rfc5228_example.sieve").read_bytes()


def test_rfc5228_full_example_compiles() -> None:
    program = compile_script(RFC5228_EXAMPLE)
    assert program.required == frozenset({"fileinto"})
    (node,) = program.commands
    assert isinstance(node, p.If)
    assert len(node.branches) == 3
    first_test, first_block = node.branches[0]
    assert isinstance(first_test, p.HeaderTest)
    assert first_test.headers == ("Sender",) and first_test.match.match_type == "is"
    assert first_block == (p.FileInto("filter", False, None, 13),)
    second_test = node.branches[1][0]
    # Tags are case-insensitive (":DOMAIN"), section 2.6.2.
    assert isinstance(second_test, p.AddressTest) and second_test.part == "domain"
    third = node.branches[2][0]
    assert isinstance(third, p.AnyOf) and isinstance(third.tests[0], p.Not)
    assert node.otherwise == (p.FileInto("personal", False, None, 38),)


def test_numbers_take_quantifiers() -> None:
    # RFC 5228 section 2.4.1: K, M and G multiply by 2^10, 2^20, 2^30.
    script = parse(b"if size :over 100K { discard; } if size :under 1m { keep; } stop 3G;")
    sizes = [c.tests[0].arguments[1] for c in script.commands[:2]]
    assert sizes == [t.Number(100 * 1024, 1), t.Number(1 << 20, 1)]
    assert script.commands[2].arguments == (t.Number(3 << 30, 1),)


def test_strings_escapes_and_multiline() -> None:
    script = parse(
        b'keep "a\\"b\\\\c\\d";\r\n'
        b"reject text: # comment after text:\r\n"
        b"line one\r\n"
        b"..dot-stuffed\r\n"
        b".\r\n"
        b";\n"
    )
    first, second = script.commands
    # Section 2.4.2: \" and \\ are escapes; an unknown escape drops the backslash.
    assert first.arguments == (t.String('a"b\\cd', 1),)
    assert second.arguments == (t.String("line one\r\n.dot-stuffed\r\n", 2),)


def test_bare_lf_and_comments() -> None:
    script = parse(b"/* a\nbracket\ncomment */ keep; # hash\ndiscard;")
    assert [c.name for c in script.commands] == ["keep", "discard"]
    assert script.commands[0].line == 3 and script.commands[1].line == 4


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        (b"keep", 1, "expected ';'"),
        (b'keep;\n"x";', 2, "unexpected a string"),
        (b"if true {\nkeep;\n", 3, "expected '}'"),
        (b'fileinto "unterminated;\n', 1, "unterminated quoted string"),
        (b"keep;\n/* never closed", 2, "unterminated /* comment"),
        (b"reject text:\nno end\n", 1, "multi-line string not ended"),
        (b"keep;\n\nkeep :;", 3, "':' must start a tag"),
        (b"if size :over 10X { keep; }", 1, "must not run into letters"),
        (b"if size :over 99999999999999999999999G {}", 1, "number too large"),
        (b"keep;\r\r\n", 1, "unexpected character"),
        (b"keep [;", 1, "expected a string in the list"),
        (b"\xff", 1, "not valid UTF-8"),
    ],
)
def test_syntax_errors_name_the_line(text: bytes, line: int, words: str) -> None:
    with pytest.raises(SieveSyntaxError) as caught:
        parse(text)
    assert caught.value.line == line
    assert words in str(caught.value)
    assert str(caught.value).startswith(f"line {line}: ")


def test_limits() -> None:
    limits = Limits(max_script_size=100, max_depth=3, max_commands=5, max_string=10, max_list=3)
    with pytest.raises(ScriptTooBig, match="larger than 100"):
        parse(b"#" * 101, limits)
    with pytest.raises(ScriptTooBig, match="nested deeper than 3"):
        parse(b"if not not not true { keep; }", limits)
    with pytest.raises(ScriptTooBig, match="more than 5 commands"):
        parse(b"keep; keep; keep; keep; keep; keep;", limits)
    with pytest.raises(ScriptTooBig, match="string longer than 10"):
        parse(b'keep "12345678901";', limits)
    with pytest.raises(ScriptTooBig, match="string longer than 10"):
        parse(b"keep text:\n123456789\n.\n;", limits)
    with pytest.raises(ScriptTooBig, match="string list longer than 3"):
        parse(b'keep ["a","b","c","d"];', limits)
    # Right at the caps passes.
    parse(b"if not not true { keep; }", limits)


def test_deep_nesting_is_refused_not_a_recursion_error() -> None:
    script = b"if " + b"not " * 100_000 + b"true { keep; }"
    with pytest.raises(ScriptTooBig):
        compile_script(script, limits=Limits(max_script_size=1 << 20))
    blocks = b"if true {" * 10_000 + b"}" * 10_000
    with pytest.raises(ScriptTooBig):
        compile_script(blocks, limits=Limits(max_script_size=1 << 20))


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        (b'fileinto "x";', 1, 'fileinto needs require "fileinto"'),
        (b'require "fileinto";\nkeep :flags "\\\\Seen";', 2, 'needs require "imap4flags"'),
        (b'require "fileinto";\nfileinto :copy "x";', 2, 'needs require "copy"'),
        (b'require ["frobnicate"];', 1, "unsupported extension 'frobnicate'"),
        (b'if header :comparator "i;foo" "a" "b" {}', 1, "unknown comparator"),
        (b'if header :comparator "i;ascii-numeric" "a" "1" {}', 1, "comparator-i;ascii-numeric"),
        (b'if header :count "gt" "a" "1" {}', 1, 'needs require "relational"'),
        (b'if address :user "to" "a" {}', 1, 'needs require "subaddress"'),
        (b'set "a" "b";', 1, 'needs require "variables"'),
        (b'require "imap4flags";\nsetflag "v" "\\\\Seen";', 2, 'needs require "variables"'),
    ],
)
def test_extensions_must_be_required(text: bytes, line: int, words: str) -> None:
    with pytest.raises(ExtensionError) as caught:
        compile_script(text)
    assert caught.value.line == line and words in str(caught.value)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (b"frobnicate;", "unknown command 'frobnicate'"),
        (b"if frob { keep; }", "unknown test 'frob'"),
        (b'keep; require "fileinto";', "require must come before"),
        (b'if true { require "fileinto"; }', "require must come before"),
        (b"else { keep; }", "else without a preceding if"),
        (b'if header :is :contains "a" "b" {}', ":contains cannot be used with :is"),
        (b'if header :is :is "a" "b" {}', ":is given twice"),
        (b'if header "a" {}', "takes 2 positional arguments, not 1"),
        (b'if header "a" :is "b" {}', "tag :is after a positional argument"),
        (b"if size 10 {}", "size needs :over or :under"),
        (b"if size :over {}", ":over needs number"),
        (b"if true;", "needs a block"),
        (b"keep { }", "keep takes no block"),
        (b'redirect ["a@b"];', "expected string, found a string list"),
        (b"if anyof true {}", "takes a test list in parentheses"),
        (b"if not (true, false) {}", "not takes one test"),
        (b"discard true;", "discard takes no test"),
        (
            b'require "comparator-i;ascii-numeric";\n'
            b'if header :matches :comparator "i;ascii-numeric" "a" "b" {}',
            ":matches cannot use i;ascii-numeric",
        ),
        (b'require "variables"; set "1" "x";', "invalid variable name '1'"),
        (b'require "envelope"; if envelope "auth" "x" {}', "envelope part 'auth'"),
        (
            b'require ["encoded-character", "reject"]; reject "${unicode:D800}";',
            "invalid code point",
        ),
    ],
)
def test_validation_errors(text: bytes, words: str) -> None:
    with pytest.raises(ValidationError) as caught:
        compile_script(text)
    assert words in str(caught.value)
    assert caught.value.line >= 1


def test_encoded_character() -> None:
    # RFC 5228 section 2.4.2.4, its examples.
    program = compile_script(
        b'require ["encoded-character", "fileinto"];\n'
        b'fileinto "${hex:40}";\n'
        b'fileinto "${hex: 40 }";\n'
        b'fileinto "${HEX: 40}";\n'
        b'fileinto "${unicode:40}";\n'
        b'fileinto "${hex:40";\n'
        b'fileinto "${hex:400}";\n'
        b'fileinto "${hex:4${hex:30}}";\n'
    )
    mailboxes = [c.mailbox for c in program.commands if isinstance(c, p.FileInto)]
    assert mailboxes == ["@", "@", "@", "@", "${hex:40", "${hex:400}", "${hex:40}"]


def test_encoded_character_not_required_is_literal() -> None:
    program = compile_script(b'require "fileinto"; fileinto "${hex:40}";')
    assert isinstance(program.commands[0], p.FileInto)
    assert program.commands[0].mailbox == "${hex:40}"


_TOKENS = st.sampled_from(
    [
        "if",
        "elsif",
        "else",
        "require",
        "keep",
        "discard",
        "stop",
        "fileinto",
        "redirect",
        "header",
        "address",
        "envelope",
        "not",
        "anyof",
        "allof",
        "true",
        "false",
        "size",
        "set",
        "string",
        "body",
        "vacation",
        "reject",
        "setflag",
        "hasflag",
        ":is",
        ":contains",
        ":matches",
        ":over",
        ":under",
        ":copy",
        ":flags",
        ":days",
        ":count",
        ":comparator",
        '"i;ascii-numeric"',
        '"gt"',
        '"fileinto"',
        '"variables"',
        '"x"',
        '"*a?b*"',
        '"${1}"',
        "10K",
        "0",
        "[",
        "]",
        "(",
        ")",
        "{",
        "}",
        ",",
        ";",
        "text:\n.\n",
        "#c\n",
        "/*c*/",
        " ",
        "\n",
    ]
)


@settings(max_examples=examples(400), deadline=None)
@given(st.lists(_TOKENS, max_size=40))
def test_token_soup_only_raises_script_errors(tokens: list[str]) -> None:
    try:
        compile_script(" ".join(tokens))
    except ScriptError:
        pass


@settings(max_examples=examples(300), deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_script_errors(data: bytes) -> None:
    # CPU time, not the clock: under load the clock counts other processes' turns.
    started = time.thread_time()
    try:
        compile_script(data)
    except ScriptError:
        pass
    assert time.thread_time() - started < 1.0


def test_big_script_parses_in_linear_time() -> None:
    # 256 KiB of commands and strings: one pass, well under a second.
    body = b'if header :contains "subject" "x" { keep; }\n' * 5000
    started = time.thread_time()  # CPU time: the clock counts other processes' turns
    compile_script(body[: 256 * 1024 - 200].rsplit(b"\n", 1)[0], limits=Limits(max_commands=20000))
    assert time.thread_time() - started < 2.0
