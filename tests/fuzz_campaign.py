"""A time-boxed differential fuzz campaign over protocols 2, 4 and 5, in one process.

Two mutant sources, in alternating chunks so that both progress whatever the time given:

- ``oracle``: ``tests/fuzz_oracle.py``'s mutants (protocol-2 bases; a mutation may make a
  protocol 3-5 pickle, judged by the translation, the FRAME rule or the pure-Python oracle);
- ``p45``: ``tests/test_protocol45.py``'s mutants (protocol 4 and 5 bases, judged on the
  protocol-2 translation, with ``store.load``'s values compared, by the FRAME rule, or by the
  pure-Python oracle).

The cumulative counts and every disagreement are written to ``--out`` after each chunk: a
campaign cut short (``--until``) still says exactly which seeds were judged. Run from the
repository root::

    PYTHONPATH=src:tests python tests/fuzz_campaign.py --oracle-mutants 50000 \\
        --p45-mutants 50000 --until 04:50 --out run.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from collections import Counter
from datetime import datetime, timezone
from typing import Any

import fuzz_oracle
from test_protocol45 import run_mutants

#: seeds per chunk: about a minute each on a quiet core
CHUNK = {"oracle": 400, "p45": 200}


def _deadline(text: str | None) -> float | None:
    """Seconds since the epoch of ``HH:MM`` UTC today (None: no deadline)."""
    if not text:
        return None
    now = datetime.now(timezone.utc)
    hour, minute = (int(x) for x in text.split(":"))
    return now.replace(hour=hour, minute=minute, second=0, microsecond=0).timestamp()


def _chunk(side: str, start: int, stop: int) -> tuple[Counter[str], list[str]]:
    if side == "p45":
        return run_mutants(range(start, stop))
    counts, bad = fuzz_oracle.run(range(start, stop), store=False)
    return counts, [f"[{r.rule}] seed {r.seed}: {r.description[:200]} ({r.path})\n"
                    f"    validator: {r.validator[:200]}\n    torch: {r.torch[:200]}\n"
                    f"    detail: {r.detail[:200]}" for r in bad]


def _disagreements(side: str, counts: Counter[str]) -> int:
    return sum(v for k, v in counts.items() if k == "disagree" or k.endswith(": disagree"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--oracle-start", type=int, default=1_000_000)
    parser.add_argument("--oracle-mutants", type=int, default=50_000)
    parser.add_argument("--p45-start", type=int, default=2_000_000)
    parser.add_argument("--p45-mutants", type=int, default=50_000)
    parser.add_argument("--until", help="stop starting chunks at this UTC time (HH:MM)")
    parser.add_argument("--out", required=True, help="the JSON summary, rewritten per chunk")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    deadline = _deadline(args.until)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    sides: dict[str, dict[str, Any]] = {
        side: {"start": start, "next": start, "stop": start + total, "seconds": 0.0,
               "counts": Counter(), "disagreements": []}
        for side, start, total in (("oracle", args.oracle_start, args.oracle_mutants),
                                   ("p45", args.p45_start, args.p45_mutants))}
    started = time.time()
    rc = 0
    while True:
        todo = [s for s in sides if sides[s]["next"] < sides[s]["stop"]]
        if not todo or (deadline is not None and time.time() >= deadline):
            break
        side = min(todo, key=lambda s: sides[s]["seconds"])  # the one behind in time
        state = sides[side]
        begin = state["next"]
        end = min(begin + CHUNK[side], state["stop"])
        t0 = time.time()
        counts, bad = _chunk(side, begin, end)
        state["seconds"] += time.time() - t0
        state["next"] = end
        state["counts"].update(counts)
        state["disagreements"].extend(bad)
        rc = rc or int(bool(bad))
        summary = {
            "commit": commit, "until": args.until, "seconds": round(time.time() - started, 1),
            "mutants": sum(s["counts"]["mutants"] for s in sides.values()),
            "disagreements": sum(_disagreements(k, s["counts"]) for k, s in sides.items()),
            "not judged": sides["oracle"]["counts"]["oracle-error"],
            "sides": {k: {"seeds": f"{s['start']}..{s['next'] - 1}",
                          "mutants": s["counts"]["mutants"],
                          "seconds": round(s["seconds"], 1),
                          "mutants per second": round(s["counts"]["mutants"]
                                                      / max(s["seconds"], 1e-9), 2),
                          "counts": dict(sorted(s["counts"].items())),
                          "disagreements": s["disagreements"]}
                      for k, s in sides.items()}}
        with open(args.out + ".tmp", "w") as fh:
            json.dump(summary, fh, indent=1)
        os.replace(args.out + ".tmp", args.out)
        print(f"{summary['seconds']:8.0f} s  oracle {sides['oracle']['counts']['mutants']}  "
              f"p45 {sides['p45']['counts']['mutants']}  disagreements "
              f"{summary['disagreements']}", file=sys.stderr, flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
