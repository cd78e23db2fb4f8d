"""A login upgrades a legacy password hash (issue 12): an account imported
with a SHA-crypt hash (``account import``, as Dovecot wrote it) gets the
node's scrypt hash at its first successful IMAP or POP3 login, written by the
owner (through ``write_owned``) and replicated to the partner; a failed
login changes nothing. ``needs_rehash`` on its own first."""

from __future__ import annotations

import functools
import imaplib
import poplib
import sqlite3
from collections.abc import Callable

from engine import shacrypt
from engine.passwords import DEFAULT_LN, hash_password, needs_rehash, scrypt_params, verify_password
from tests.harness.daemons import SCRYPT_COST
from tests.harness.procs import wait_until
from tests.nodes import Node


def _sha512(password: str, salt: str = "importedsalt") -> str:
    return f"$6${salt}${shacrypt.sha_crypt(password.encode(), salt, 5000, '6')}"


def test_needs_rehash_only_below_the_current_scheme() -> None:
    assert needs_rehash(_sha512("pw"))
    assert needs_rehash("$5$salt$" + "a" * 43)
    weak = "$scrypt$ln=10,r=8,p=1$" + hash_password("pw").split("$", 3)[3]
    assert needs_rehash(weak)
    assert not needs_rehash(hash_password("pw"))
    stronger = hash_password("pw").replace("ln=15", "ln=16")
    assert not needs_rehash(stronger)  # never weakened
    # At a node's own cost (``[auth] scrypt_cost``): below it, rehash.
    assert hash_password("pw").startswith(f"$scrypt$ln={DEFAULT_LN},")
    assert needs_rehash(hash_password("pw", 10), 12)
    assert not needs_rehash(hash_password("pw", 12), 12)
    assert not needs_rehash(hash_password("pw"), 12)


def _stored(node: Node, account: str) -> str:
    with sqlite3.connect(f"file:{node.db_path}?mode=ro", uri=True, timeout=30) as db:
        row = db.execute("SELECT password_hash FROM accounts WHERE name = ?", (account,)).fetchone()
    db.close()
    return str(row[0]) if row else ""


def test_a_login_rehashes_an_imported_hash_and_the_partner_gets_it(
    pair: tuple[Node, Node],
) -> None:
    alpha, beta = pair

    def on_beta(user: str, stored: str) -> bool:
        return _stored(beta, user) == stored

    for user in ("alice", "bob"):
        legacy = _sha512(f"{user}-pw")
        assert verify_password(f"{user}-pw", legacy)
        alpha.call("POST", "/v1/accounts", {"name": user, "password_hash": legacy})
        wait_until(functools.partial(on_beta, user, legacy), 30, f"{user} on beta")

    # A wrong password changes nothing.
    with imaplib.IMAP4("127.0.0.1", alpha.ports["imap"], timeout=20) as imap:
        try:
            imap.login("alice", "wrong")
        except imaplib.IMAP4.error:
            pass
    assert _stored(alpha, "alice").startswith("$6$")

    with imaplib.IMAP4("127.0.0.1", alpha.ports["imap"], timeout=20) as imap:
        imap.login("alice", "alice-pw")
    pop = poplib.POP3("127.0.0.1", alpha.ports["pop3"], timeout=20)
    try:
        pop.user("bob")
        pop.pass_("bob-pw")
    finally:
        pop.quit()

    for user in ("alice", "bob"):
        upgraded = _stored(alpha, user)
        # At the nodes' cost (the test harness's SCRYPT_COST).
        assert scrypt_params(upgraded) == (SCRYPT_COST, 8, 1), upgraded
        assert not needs_rehash(upgraded, SCRYPT_COST)
        assert verify_password(f"{user}-pw", upgraded)
        wait_until(functools.partial(on_beta, user, upgraded), 30, "replicated")
    with imaplib.IMAP4("127.0.0.1", alpha.ports["imap"], timeout=20) as imap:
        imap.login("alice", "alice-pw")  # the new hash logs in


def test_the_node_hashes_at_its_scrypt_cost_and_raises_a_weaker_hash_to_it(
    lone_node: Callable[..., Node],
) -> None:
    """``[auth] scrypt_cost``: new passwords (``account add``, ``passwd``) are
    hashed at it, and a login with a hash below it replaces the hash."""
    node = lone_node({"auth": {"scrypt_cost": 12}})
    node.add_account("carol", "carol-pw")
    assert scrypt_params(_stored(node, "carol")) == (12, 8, 1)
    node.call("POST", "/v1/accounts", {"name": "dave", "password_hash": hash_password("d-pw", 10)})
    node.call("PUT", "/v1/accounts/carol/password", {"password": "carol-new"})
    assert scrypt_params(_stored(node, "carol")) == (12, 8, 1)
    assert verify_password("carol-new", _stored(node, "carol"))
    with imaplib.IMAP4("127.0.0.1", node.ports["imap"], timeout=20) as imap:
        imap.login("dave", "d-pw")
    wait_until(lambda: scrypt_params(_stored(node, "dave")) == (12, 8, 1), 10, "dave rehashed")
    assert verify_password("d-pw", _stored(node, "dave"))
