"""Messages shaped by a hostile sender against the parsers that read every
stored message: what one message costs, in CPU seconds and peak RSS.

    .venv/bin/python -m bench.message_shapes [--mb 10] [--shapes parts,nest,...]
        [--timeout 60]

Each shape is built at ``--mb`` megabytes (the default ``[lmtp]
max_message_size`` is 50) and given to each parser in a child process of its
own (so each peak RSS is that parser's, the message's own bytes included):

- ``structures``: IMAP's ENVELOPE, BODYSTRUCTURE and BODY, what the parse
  walker stores for every message (:func:`peerd.protocols.imap.parsed.structures`);
- ``sort_record``: the RFC 5256 sort keys, stored beside them;
- ``fulltext``: the indexer's search text (:func:`engine.fulltext.extract`);
- ``sieve_body``: Sieve's ``body`` test's parts, per recipient whose script
  has one (:func:`peerd.protocols.sieve.message.body_parts`);
- ``search_text``: SEARCH BODY/TEXT's text from the bytes, for a message the
  indexer has not reached.

The shapes: ``parts`` (empty MIME parts, 10 bytes each), ``nest`` (49
multiparts around one text part that holds the bulk), ``rfc822`` (the same
with message/rfc822), ``fields`` (a header of 6-byte fields), ``folded``
(one field folded over a line every 4 bytes), ``words`` (a subject of RFC 2047
encoded words), ``html`` (sixteen text/html parts of bare tags). A parser
still running after ``--timeout`` seconds prints TIMEOUT.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable

SHAPES = ("parts", "nest", "rfc822", "fields", "folded", "words", "html")


def shape(name: str, mb: int) -> bytes:
    """A message of about ``mb`` megabytes shaped as ``name`` (module docstring)."""
    size = mb * 1_000_000
    head = b"From: a@example.test\r\n"
    if name == "parts":
        body = b"--b\r\n\r\nx\r\n" * (size // 10) + b"--b--\r\n"
        return head + b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + body
    if name in ("nest", "rfc822"):
        inner = b"Content-Type: text/plain\r\n\r\n" + b"x" * size + b"\r\n"
        for level in range(49):
            if name == "rfc822":
                inner = b"Content-Type: message/rfc822\r\n\r\n" + inner
                continue
            b = b"b%d" % level
            ctype = b"Content-Type: multipart/mixed; boundary=" + b + b"\r\n\r\n"
            inner = ctype + b"--" + b + b"\r\n" + inner + b"\r\n--" + b + b"--\r\n"
        return head + inner
    if name == "fields":
        return head + b"a: b\r\n" * (size // 6) + b"\r\nbody\r\n"
    if name == "folded":
        return head + b"Subject: x" + b"\r\n x" * (size // 4) + b"\r\n\r\nbody\r\n"
    if name == "words":
        return head + b"Subject: " + b"=?utf-8?q?a?= " * (size // 14) + b"\r\n\r\nbody\r\n"
    if name == "html":
        part = b"<b></b>" * (size // 16 // 7)
        html = b"--b\r\nContent-Type: text/html\r\n\r\n" + part + b"\r\n"
        return (
            head + b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + html * 16 + b"--b--\r\n"
        )
    raise SystemExit(f"no shape {name!r}: one of {', '.join(SHAPES)}")


def parser(name: str) -> Callable[[bytes], object]:
    if name == "structures":
        from peerd.protocols.imap.parsed import structures

        return structures
    if name == "sort_record":
        from peerd.protocols.imap.sort import build_record

        return build_record
    if name == "fulltext":
        from engine.fulltext import extract

        return extract
    if name == "sieve_body":
        from peerd.protocols.sieve.message import body_parts

        return body_parts
    if name == "search_text":
        from peerd.protocols.imap import structure

        return lambda raw: structure.search_text(structure.parse(raw))
    raise SystemExit(f"no parser {name!r}")


PARSERS = ("structures", "sort_record", "fulltext", "sieve_body", "search_text")


def child(name: str, mb: int, which: str) -> None:
    """Run one parser on one shape; print its CPU seconds and peak RSS."""
    work = parser(which)
    raw = shape(name, mb)
    started = time.process_time()
    work(raw)
    cpu = time.process_time() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(json.dumps({"cpu_s": round(cpu, 2), "peak_rss_mb": peak}))


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    args.add_argument("--mb", type=int, default=10)
    args.add_argument("--shapes", default=",".join(SHAPES))
    args.add_argument("--timeout", type=float, default=60.0)
    args.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    opts = args.parse_args()
    if opts.child:
        child(opts.child[0], opts.mb, opts.child[1])
        return
    print(f"{'shape':<8} {'parser':<12} {'CPU s':>7} {'peak RSS MB':>12}  ({opts.mb} MB each)")
    for name in opts.shapes.split(","):
        for which in PARSERS:
            argv = [sys.executable, "-m", "bench.message_shapes", "--mb", str(opts.mb)]
            try:
                done = subprocess.run(
                    [*argv, "--child", name, which],
                    capture_output=True,
                    text=True,
                    timeout=opts.timeout,
                    check=True,
                )
                row = json.loads(done.stdout)
                print(f"{name:<8} {which:<12} {row['cpu_s']:>7} {row['peak_rss_mb']:>12}")
            except subprocess.TimeoutExpired:
                print(f"{name:<8} {which:<12} {'TIMEOUT':>7}")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
