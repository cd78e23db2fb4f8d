"""Bulk provisioning: ``peerctl account import`` (issue 12; target 10,000 accounts <= 30 s).

    .venv/bin/python -m bench.account_import [--accounts 10000] [--plain 100] [--wait 60]

A fresh pair (two real daemons, rolling replication on). A Dovecot
passwd-file of ``--accounts`` users, each with its own ``{SHA512-CRYPT}``
hash (5,000 rounds, as ``doveadm pw`` writes them) and a quota rule, is
imported on alpha by the real ``peerctl`` (batches of 1,000, one request
each); the figure is the command's wall time. Then how long beta takes to
holds after ``--wait`` seconds (the rolling replicator, after the import
returned), and
a CSV of ``--plain`` users with plain passwords, which the node hashes
(scrypt), to show what a plain password costs per account.
"""

from __future__ import annotations

import argparse
import secrets
import tempfile
import time
import warnings
from pathlib import Path

from engine import shacrypt
from tests.nodes import Node, make_pair, peerctl, running

__all__ = ["main"]

_B64 = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _hasher() -> tuple[str, object]:
    """libc's crypt(3) when Python still has it (fast), else engine.shacrypt."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import crypt

            return "libc crypt(3)", crypt.crypt
        except ImportError:
            pass

    def pure(password: str, setting: str) -> str:
        salt = setting.split("$")[2]
        return f"{setting}${shacrypt.sha_crypt(password.encode(), salt, 5000, '6')}"

    return "engine.shacrypt", pure


def passwd_file(path: Path, count: int) -> None:
    _, crypt = _hasher()
    lines = []
    for i in range(count):
        salt = "".join(secrets.choice(_B64) for _ in range(16))
        hashed = crypt(f"pw{i}", f"$6${salt}")  # type: ignore[operator]
        lines.append(
            f"user{i:05d}@example.test:{{SHA512-CRYPT}}{hashed}:1000:1000::/home/u{i}::"
            "userdb_quota_rule=*:storage=100M"
        )
    path.write_text("\n".join(lines) + "\n")


def count_accounts(node: Node) -> int:
    return len(node.call("GET", "/v1/accounts")["accounts"])


def timed_import(node: Node, path: Path) -> float:
    started = time.monotonic()
    done = peerctl(node, "account", "import", str(path), timeout=600)
    took = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"import failed ({done.returncode}): {done.stdout}{done.stderr}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--plain", type=int, default=100)
    parser.add_argument("--wait", type=float, default=60.0, help="seconds to watch beta")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        source = workdir / "users.passwd"
        started = time.monotonic()
        passwd_file(source, args.accounts)
        print(f"passwd-file of {args.accounts} users written in {time.monotonic() - started:.1f} s")
        alpha, beta = make_pair(workdir)
        with running(alpha, beta):
            took = timed_import(alpha, source)
            imported = time.monotonic()
            print(
                f"import of {args.accounts} accounts (passwd-file, SHA512-CRYPT kept): "
                f"{took:.1f} s ({args.accounts / took:.0f} accounts/s)"
            )
            assert count_accounts(alpha) == args.accounts
            # The rolling replicator syncs each new account on its own: how
            # far it gets in --wait seconds.
            deadline = imported + args.wait
            on_beta = count_accounts(beta)
            while on_beta < args.accounts and time.monotonic() < deadline:
                time.sleep(1.0)
                on_beta = count_accounts(beta)
            waited = time.monotonic() - imported
            print(
                f"  on beta {waited:.0f} s after the import: {on_beta} accounts "
                f"({on_beta / waited:.0f} accounts/s replicated)",
                flush=True,
            )
            if args.plain:
                plain = workdir / "plain.csv"
                plain.write_text(
                    "name,password,quota\n"
                    + "".join(f"plain{i}@example.test,secret{i},50M\n" for i in range(args.plain))
                )
                took = timed_import(alpha, plain)
                print(
                    f"import of {args.plain} accounts with plain passwords (CSV, scrypt on "
                    f"the node): {took:.1f} s ({took / args.plain * 1000:.0f} ms per account)"
                )


if __name__ == "__main__":
    main()
