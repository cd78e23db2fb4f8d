"""``peerd``: the daemon's command line: ``run``, ``migrate``, ``check-config``,
``check-db`` (the database's integrity check; exit status 65 on damage) and
``rebuild --from-partner`` (:mod:`peerd.app.rebuild`), each with ``-c FILE``."""

from __future__ import annotations

import argparse
import sys

from peerd.node.config import Config, ConfigError, load_config, load_for_service
from peerd.node.version import release

__all__ = ["main"]


class _Version(argparse.Action):
    """``--version``: the release, the sync protocol versions it speaks and
    its schema revision (what an upgrade changes; docs/upgrading.md)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        import migrations
        from engine.syncwire import PROTOCOL_OLDEST, PROTOCOL_VERSION

        protocol = (
            f"{PROTOCOL_VERSION}"
            if PROTOCOL_OLDEST == PROTOCOL_VERSION
            else f"{PROTOCOL_OLDEST}-{PROTOCOL_VERSION}"
        )
        print(f"peerd {release()} (sync protocol {protocol}, schema {migrations.head()})")
        parser.exit()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="peerd", description="peerd mail node daemon")
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the daemon in the foreground (systemd Type=notify)")
    run.add_argument("-c", "--config", required=True, help="the node's TOML file")
    run.add_argument("--log-format", choices=("text", "json"), help="override [log] format")
    migrate = sub.add_parser("migrate", help="bring the database schema to the newest revision")
    migrate.add_argument("-c", "--config", required=True)
    check = sub.add_parser("check-config", help="read the config and report errors")
    check.add_argument("-c", "--config", required=True)
    check_db = sub.add_parser(
        "check-db", help="run the database's integrity check (the daemon may be running)"
    )
    check_db.add_argument("-c", "--config", required=True)
    check_db.add_argument(
        "--full", action="store_true", help="SQLite integrity_check too; amcheck heapallindexed"
    )
    rebuild = sub.add_parser(
        "rebuild", help="a fresh store for this node, filled by its partner (daemon stopped)"
    )
    rebuild.add_argument("-c", "--config", required=True)
    rebuild.add_argument(
        "--from-partner", action="store_true", required=True, help="the partner's copy (required)"
    )
    backup = sub.add_parser(
        "backup", help="copy the node's database, then its spool, into DIR (while it runs)"
    )
    backup.add_argument("-c", "--config", required=True)
    backup.add_argument("dir", help="a new or empty directory")
    restore = sub.add_parser("restore", help="put a backup into this node, which has no data yet")
    restore.add_argument("-c", "--config", required=True)
    restore.add_argument("dir", help="a directory peerd backup wrote")
    # Started by the daemon for [lmtp] workers; not for admins.
    worker = sub.add_parser("lmtp-worker")
    worker.add_argument("-c", "--config", required=True)
    worker.add_argument("--listen-fd", type=int, required=True)
    worker.add_argument("--pipe-fd", type=int, required=True)
    worker.add_argument("--parent", type=int, required=True)
    worker.add_argument("--log-format", choices=("text", "json"))
    worker.add_argument("--config-stdin", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "lmtp-worker":
        from peerd.services.lmtp.worker import worker_main

        return worker_main(
            args.config,
            args.listen_fd,
            args.pipe_fd,
            args.parent,
            args.log_format,
            args.config_stdin,
        )
    try:
        if args.command in ("check-config", "run"):
            config = load_for_service(args.config)
        else:
            config = load_config(args.config)
    except ConfigError as exc:
        if not str(exc).startswith(args.config):
            exc = ConfigError(f"{args.config}: {exc}")
        print(f"peerd: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        print(f"{args.config}: ok (node {config.node.name})")
        return 0
    if args.command == "check-db":
        return _check_db(config, args.full)
    if args.command == "rebuild":
        return _rebuild(config)
    if args.command in ("backup", "restore"):
        return _backup_or_restore(args.command, config, args.dir)
    if args.command == "migrate":
        import migrations

        config.node.data_dir.mkdir(parents=True, exist_ok=True)
        migrations.upgrade(config.database_url)
        print(f"database at head: {config.database_url.split('@')[-1]}")
        return 0
    from peerd.app.daemon import run_daemon

    return run_daemon(config, args.log_format)


def _check_db(config: Config, full: bool) -> int:
    from engine.dbcheck import check_database
    from peerd.app.dbcheck import EXIT_DATABASE_DAMAGED, damage_line

    result = check_database(config.database_url, full=full)
    where = config.database_url.split(":///", 1)[-1].rsplit("@", 1)[-1]
    if not result.ok:
        print(f"peerd: {damage_line(config, result.summary)}", file=sys.stderr)
        return EXIT_DATABASE_DAMAGED
    if not result.checked:
        print(f"database {where}: not checked: {result.note}")
        return 0
    print(f"database {where}: ok ({result.backend} {result.method}, {result.seconds:.2f} s)")
    return 0


def _rebuild(config: Config) -> int:
    import asyncio

    from engine.errors import EngineError
    from peerd.app.rebuild import RebuildNotConfigured, RebuildRefused, rebuild_from_partner

    try:
        asyncio.run(rebuild_from_partner(config, lambda line: print(line, flush=True)))
    except RebuildRefused as exc:
        print(f"peerd: rebuild refused: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, RebuildNotConfigured) else 1
    except ConnectionError as exc:
        print(f"peerd: rebuild stopped: the partner stopped answering ({exc})", file=sys.stderr)
        return 1
    except EngineError as exc:  # the partner's sync listener, or the new database
        print(f"peerd: rebuild stopped: {exc.message}; run it again", file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. the sync listener's port is taken
        print(f"peerd: rebuild stopped: {exc}", file=sys.stderr)
        return 1
    return 0


def _backup_or_restore(command: str, config: Config, directory: str) -> int:
    from pathlib import Path

    from peerd.app.backup import BackupError, backup, restore

    try:
        if command == "backup":
            done = backup(config, Path(directory))
            print(
                f"backup of {done.node} in {directory}: {done.database} database at schema "
                f"{done.schema}, {done.files} message file(s), {done.bytes} bytes; "
                f"every delivery acknowledged before {done.started_at} is in it"
            )
        else:
            done = restore(config, Path(directory))
            print(
                f"restored {done.node} from the backup of {done.started_at}: {done.files} "
                "message file(s); start the node (docs/backup.md: on a pair, fail over first)"
            )
    except BackupError as exc:
        print(f"peerd {command}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
