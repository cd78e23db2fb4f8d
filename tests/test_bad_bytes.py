"""Bytes that are not what a command may hold get a protocol error and one
line at most in the log, never a traceback (issue 9 item 9, mail side)."""

from __future__ import annotations

import socket
from collections.abc import Callable

from tests.conftest import LoneNode

NodeFactory = Callable[..., LoneNode]

IMAP_LINES = [
    b"a NOOP BODY[ \xff]\r\n",
    b"a LOGIN \xff\xfe \xff\r\n",
    b"\xff\xff\xff\r\n",
    b"a \xc3\x28 \r\n",
    b'a LOGIN "\xff" "x"\r\n',
    b"a AUTHENTICATE PLAIN \xff\xff\r\n",
    b'a ID ("name" "\xff")\r\n',
    b"a CAPABILITY \x00\r\n",
    # A literal size int() refuses (more than 4300 digits): * BYE, not a traceback.
    b"a LOGIN {" + b"9" * 5000 + b"}\r\n",
]
POP3_LINES = [b"USER \xff\xfe\r\n", b"\xff\xff\r\n", b"AUTH PLAIN \xff\r\n", b"APOP \xff \xfe\r\n"]


def test_undecodable_bytes_before_login(lone_node: NodeFactory) -> None:
    node = lone_node()
    node.add_account("user")
    for listener, lines, greeting in (("imap", IMAP_LINES, b"* OK"), ("pop3", POP3_LINES, b"+OK")):
        for line in lines:
            with socket.create_connection(("127.0.0.1", node.port(listener)), timeout=10) as raw:
                reader = raw.makefile("rb")
                assert reader.readline().startswith(greeting)
                raw.sendall(line)
                answer = reader.readline()
                assert answer.startswith((b"a BAD", b"a NO", b"* BAD", b"* BYE", b"-ERR", b"+ ")), (
                    line,
                    answer,
                )
                reader.close()
    # After login too.
    with socket.create_connection(("127.0.0.1", node.port("imap")), timeout=10) as raw:
        reader = raw.makefile("rb")
        reader.readline()
        raw.sendall(b"a LOGIN user secret\r\n")
        assert reader.readline().startswith(b"a OK")
        for line in (
            b"b SELECT \xff\r\n",
            b"c SEARCH SUBJECT \xff\r\n",
            b'd CREATE "\xff\xfe"\r\n',
            b'e LIST "" "\xff*"\r\n',
            # A date-time the store cannot hold in UTC (it overflowed in APPEND).
            b'f APPEND INBOX " 1-Jan-0001 00:00:00 +0100" {2+}\r\nhi\r\n',
            b'g STATUS "&AOkA6Q-" (MESSAGES)\r\n',  # echoes the name: 7-bit
        ):
            raw.sendall(line)
            while (answer := reader.readline()).startswith(b"*"):
                pass
            assert answer.isascii(), (line, answer)
            assert answer[:1] in b"bcdefg" and answer.split()[1] in (b"OK", b"NO", b"BAD"), (
                line,
                answer,
            )
        reader.close()
    log = node.log.read_text(errors="replace")
    assert "Traceback" not in log
