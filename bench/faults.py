"""Fault figures (issue 15): failback under a continuous load.

    .venv/bin/python -m bench.faults [--trials 3] [--rate 50]

Prints, for ``--trials`` failbacks (each on a fresh pair, see
:mod:`bench.failback`), every trial and the medians of the failback time
(target <= 5 s) and of the time writes were held (target <= 1 s), and the
acknowledged deliveries lost (target 0).
"""

from __future__ import annotations

import argparse
import statistics

from bench.failback import failback_figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--rate", type=float, default=50.0, help="LMTP messages a second")
    args = parser.parse_args()
    figures = failback_figures(args.trials, args.rate)
    print(f"failback under a continuous {args.rate:g} msgs/s LMTP load, {args.trials} trial(s):")
    for n, f in enumerate(figures, 1):
        print(
            f"  trial {n}: failback {f['seconds']:.3f} s, writes held {f['writes_held']:.3f} s, "
            f"{f['acked']} acknowledged, {f['deferred']} 4xx, {f['lost']} lost"
        )
    seconds = statistics.median(f["seconds"] for f in figures)
    held = statistics.median(f["writes_held"] for f in figures)
    lost = sum(f["lost"] for f in figures)
    print(f"  median: failback {seconds:.3f} s (target <= 5 s), writes held {held:.3f} s (<= 1 s)")
    print(f"  acknowledged deliveries lost: {lost} (target 0)")


if __name__ == "__main__":
    main()
