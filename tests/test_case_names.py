"""Account names are case-insensitive in the local part by default
(``[accounts] lowercase_names``, as Cyrus lower-cases them): made lower-case,
and every recipient, login and routing lookup lower-cases what it is given.
With the switch off, names match exactly; an account made with capitals
then is still found by its stored name once the switch is turned on."""

from __future__ import annotations

import imaplib
import poplib
import smtplib
import urllib.request
from collections.abc import Callable

from tests.nodes import Node
from tests.test_routing import socketmap_query

LoneNode = Callable[..., Node]


def _imap_login(node: Node, user: str) -> bool:
    client = imaplib.IMAP4("127.0.0.1", node.ports["imap"], timeout=20)
    try:
        client.login(user, "secret")
        return True
    except imaplib.IMAP4.error:
        return False
    finally:
        client.logout()


def _pop3_login(node: Node, user: str) -> bool:
    client = poplib.POP3("127.0.0.1", node.ports["pop3"], timeout=20)
    try:
        client.user(user)
        client.pass_("secret")
        return True
    except poplib.error_proto:
        return False
    finally:
        client.quit()


def _nginx(node: Node, user: str) -> str:
    request = urllib.request.Request(
        f"{node.api}/v1/route/nginx",
        headers={
            "Auth-User": user,
            "Auth-Pass": "secret",
            "Auth-Protocol": "imap",
            "Auth-Method": "plain",
            "Client-IP": "192.0.2.1",
        },
    )
    with urllib.request.urlopen(request, timeout=20) as answer:
        return str(answer.headers["Auth-Status"])


def _deliver(node: Node, rcpt: str) -> dict[str, tuple[int, bytes]]:
    with node.lmtp() as lmtp:
        try:
            return lmtp.sendmail("me@example.test", [rcpt], b"Subject: case\r\n\r\nhi\r\n")
        except smtplib.SMTPRecipientsRefused as exc:
            return dict(exc.recipients)


def test_names_are_case_insensitive_by_default(lone_node: LoneNode) -> None:
    node = lone_node({"accounts": {}})
    assert node.add_account("ALICE")["name"] == "alice"
    assert _deliver(node, "ALICE@Example.Test") == {}
    assert _deliver(node, "Alice+Work@example.test") == {}
    # A quoted local part is the same mailbox (RFC 5321 4.1.2), sent as
    # written (smtplib's own quoting would take the quotes off).
    with node.lmtp() as lmtp:
        lmtp.ehlo("t")
        assert lmtp.mail("me@example.test")[0] == 250
        lmtp.putcmd('RCPT TO:<"ALICE"@example.test>')
        assert lmtp.getreply()[0] == 250
        assert lmtp.data(b"Subject: quoted\r\n\r\nhi\r\n")[0] == 250
    assert len(node.records("alice")) == 3
    assert _imap_login(node, "ALICE") and _imap_login(node, "alice")
    assert _pop3_login(node, "Alice")
    # Space and tab around a typed name go; any other character str.strip()
    # takes (U+001F, U+0085, a line end) makes another name, which no
    # account has.
    assert _imap_login(node, " alice ") and _pop3_login(node, "alice\t")
    assert not _imap_login(node, "alice\x1f") and not _pop3_login(node, "\x85alice")
    assert _nginx(node, "aLiCe") == "OK"
    assert node.call("GET", "/v1/route/ALICE")["account"] == "alice"
    assert socketmap_query(node.ports["socketmap"], "mailbox", "ALICE@example.test") == "OK alice"
    assert socketmap_query(node.ports["socketmap"], "transport", "Alice@example.test").startswith(
        "OK lmtp:"
    )


def test_with_the_switch_off_names_match_exactly(lone_node: LoneNode) -> None:
    node = lone_node({"accounts": {"lowercase_names": False}})
    assert node.add_account("Bob")["name"] == "Bob"
    refused = _deliver(node, "bob@example.test")
    assert refused["bob@example.test"][0] == 550
    assert _deliver(node, "Bob@example.test") == {}
    assert not _imap_login(node, "bob") and _imap_login(node, "Bob")
    assert socketmap_query(node.ports["socketmap"], "mailbox", "bob@example.test") == "NOTFOUND "
    # Turned on later: the account made with a capital still receives and
    # logs in by its name as stored; new names are made lower-case.
    node.stop()
    text = node.config.read_text().replace("lowercase_names = false", "lowercase_names = true")
    node.config.write_text(text)
    node.start()
    assert _deliver(node, "Bob@example.test") == {}
    assert _imap_login(node, "Bob") and _pop3_login(node, "Bob")
    assert node.call("GET", "/v1/route/Bob")["account"] == "Bob"
    assert len(node.records("Bob")) == 2
    assert node.add_account("Carol")["name"] == "carol"
    assert _deliver(node, "CAROL@example.test") == {}
