"""Before ownership moves: the target checks the moving accounts' bodies, and heals them.

How this works: a switchover (and so a failback, which the owner runs as a
switchover) moves accounts onto the partner's copy of them. That copy can be
damaged without anyone knowing: RESERVE trusts a file that is there, so a
sync never re-sends it. So the owner first asks the target to verify
(``POST /sync/v1/verify``): the target reads every body of the accounts
(``[scrub] verify_on_move = true``, the default; false: it only looks for
missing files and bodies its scrub or reads already found damaged), and each
damaged one it fetches from us by GUID and puts in place. This runs before
the accounts are marked ``moving``, so writes are not held while it reads.

Repair first, then move: the target is made whole, so a switchover neither
waits for an operator nor moves onto bad bytes. What cannot be repaired (no
whole copy on either node) refuses the move with
:class:`~ownership.errors.TargetDamaged`, naming the GUIDs: ownership never
moves onto a copy known bad. Those messages are lost on both nodes; the
operator expunges them (or restores them from a backup) and moves again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from engine.errors import PartnerDown
from engine.syncwire import decode_json, encode_json
from ownership.errors import PartnerUnreachable, TargetDamaged
from peerd.pair.partner import Pair

__all__ = ["VERIFY_TIMEOUT", "verify_target"]

log = logging.getLogger("peerd.pair.verify")

# Seconds a verify may take: it reads whole accounts on the target.
VERIFY_TIMEOUT = 6 * 3600.0


async def verify_target(pair: Pair, accounts: Sequence[str]) -> dict[str, object]:
    """Have the partner check (and heal from us) ``accounts``' bodies; raise
    :class:`TargetDamaged` if some stay damaged. Returns the partner's report."""
    node, client = pair.node, pair.client
    full = node.config.scrub.verify_on_move
    body = encode_json({"accounts": list(accounts), "full": full})
    try:
        raw = await client.call(
            "verify", body, compressed=client.compress_default, timeout=VERIFY_TIMEOUT
        )
    except PartnerDown as exc:
        raise PartnerUnreachable(
            f"{node.partner} does not answer: a switchover needs it (use failover)"
        ) from exc
    report = decode_json(raw)
    damaged = report.get("unrepairable", []) + report.get("not_repaired", [])
    log.info(
        "%s verified %d bodies of %d account(s) before the move: %d damaged, %d repaired",
        node.partner,
        report.get("files", 0),
        len(accounts),
        len(report.get("damaged", [])),
        len(report.get("repaired", [])),
    )
    if damaged:
        shown = ", ".join(str(g) for g in damaged[:5])
        more = f" and {len(damaged) - 5} more" if len(damaged) > 5 else ""
        raise TargetDamaged(
            f"{node.partner} holds {len(damaged)} damaged message(s) of the accounts to move "
            f"that could not be repaired from {node.name} ({shown}{more}): ownership does not "
            f"move onto them. `peerctl status` on {node.partner} lists them; see "
            "'Damaged spool' in docs/failover.md",
            [str(g) for g in damaged],
        )
    return report
