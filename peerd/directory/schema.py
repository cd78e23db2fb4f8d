"""The directory's schema: numbered steps of plain PostgreSQL DDL.

How this works: the directory is not a node's store. It is one PostgreSQL
database shared by every node of every pair, so its schema is kept here, in
its own module, apart from the store's Alembic migrations. :data:`STEPS` is
the whole history, step *n* taking the schema from version *n - 1* to *n*;
every statement is idempotent (``IF NOT EXISTS``). :func:`ensure` runs at
every node's start, in one transaction under a transaction-scoped advisory
lock, so nodes starting together apply each step once; the version reached
is in ``directory_schema``. A node that finds a version newer than it knows
keeps going (steps only add), and says so in its log.

Why not a second Alembic environment: the directory has one dialect, a few
tables, and many writers of different releases starting at any time; a list
of additive statements under a lock says all of that, with no second
migration tree, ``alembic.ini`` or version table to ship and keep in step.
The tables are prefixed ``directory_`` so they cannot collide with a store's
even if both were pointed at one database.
"""

from __future__ import annotations

import logging

from sqlalchemy import Connection, text

__all__ = ["STATES", "STEPS", "VERSION", "ensure"]

log = logging.getLogger("peerd.directory.schema")

# ``state`` of an account in the directory: served by its pair (active), or
# being moved to another pair (moving, with move_to naming it: see
# peerd.directory.transfer and its record in directory_moves).
STATES = ("active", "moving")

# Any fixed 64-bit number peerd alone uses: the lock the schema steps run under.
_LOCK = 0x70656572645F6469  # "peerd_di"

STEPS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE IF NOT EXISTS directory_pairs (
            name varchar(64) PRIMARY KEY,
            created_at timestamptz NOT NULL DEFAULT now()
        )""",
        """CREATE TABLE IF NOT EXISTS directory_nodes (
            pair varchar(64) NOT NULL REFERENCES directory_pairs (name),
            node varchar(64) NOT NULL,
            imap varchar(300),
            pop3 varchar(300),
            lmtp varchar(300),
            api varchar(300),
            release varchar(64) NOT NULL DEFAULT '',
            last_heartbeat timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (pair, node)
        )""",
        """CREATE TABLE IF NOT EXISTS directory_accounts (
            account varchar(255) PRIMARY KEY,
            pair varchar(64) NOT NULL REFERENCES directory_pairs (name),
            owner varchar(64) NOT NULL,
            epoch bigint NOT NULL,
            ownership varchar(16) NOT NULL DEFAULT 'normal',
            state varchar(16) NOT NULL DEFAULT 'active'
                CHECK (state IN ('active', 'moving')),
            move_to varchar(64) REFERENCES directory_pairs (name),
            updated_at timestamptz NOT NULL DEFAULT now()
        )""",
        "CREATE INDEX IF NOT EXISTS directory_accounts_pair ON directory_accounts (pair)",
    ),
    (
        # 2: moving accounts between pairs. Where a node's sync listener is
        # (the copy goes there), and one row per move: its step, durable.
        "ALTER TABLE directory_nodes ADD COLUMN IF NOT EXISTS sync varchar(300)",
        """CREATE TABLE IF NOT EXISTS directory_moves (
            account varchar(255) PRIMARY KEY,
            from_pair varchar(64) NOT NULL REFERENCES directory_pairs (name),
            to_pair varchar(64) NOT NULL REFERENCES directory_pairs (name),
            source varchar(64) NOT NULL,
            target varchar(64) NOT NULL,
            epoch bigint NOT NULL,
            step varchar(16) NOT NULL,
            held_seconds double precision NOT NULL DEFAULT 0,
            bytes_sent bigint NOT NULL DEFAULT 0,
            mailbox_bytes bigint NOT NULL DEFAULT 0,
            messages bigint NOT NULL DEFAULT 0,
            note varchar(500) NOT NULL DEFAULT '',
            delete_after timestamptz,
            started_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        )""",
    ),
)

VERSION = len(STEPS)


def ensure(conn: Connection) -> int:
    """Bring the schema to :data:`VERSION` (in the caller's transaction);
    the version the directory is at afterwards."""
    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK})
    conn.execute(text("CREATE TABLE IF NOT EXISTS directory_schema (version integer NOT NULL)"))
    found = conn.execute(text("SELECT max(version) FROM directory_schema")).scalar()
    at = int(found or 0)
    for number, statements in enumerate(STEPS, start=1):
        if number <= at:
            continue
        for statement in statements:
            conn.execute(text(statement))
        conn.execute(text("INSERT INTO directory_schema (version) VALUES (:v)"), {"v": number})
        log.info("directory schema: step %d applied", number)
        at = number
    if at > VERSION:
        log.warning("directory schema is at version %d, newer than this release's %d", at, VERSION)
    return at
