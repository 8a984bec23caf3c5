"""Placement at scale: how long `plan` takes to place the sick hosts' VMs, and whether it keeps the rules.

Run: `PYTHONPATH=. .venv/bin/python bench/bench_placement.py [--hosts 1000] [--vms 20000]
[--sick-share 0.03] [--runs 5]`. A seeded cloud (evacuator/placement/simulate.py: realistic host and VM
sizes, groups, replicated functions, hosts partly full, a few stale, quarantined, in maintenance or refusing,
`--spares` empty spare hosts as the policy's preferred hosts) has `--sick-share` of its hosts turn sick at
once; `plan` places all their VMs in one call. Only `plan` is timed (time.perf_counter around it), `--runs`
times; the median is compared with the goal (< 0.5 s), the worst printed too. The independent checker
(placement/check.py) then counts the plan's rule violations (must be 0), and the share of VMs placed is
printed with the reasons for the rest. Pure CPU, no I/O: runs anywhere, in seconds. Exits 1 if a goal fails.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter
from datetime import UTC, datetime

from evacuator.placement.check import check
from evacuator.placement.model import Placement, PlacementPolicy
from evacuator.placement.place import plan
from evacuator.placement.simulate import simulate_cloud

GOAL_MEDIAN_SECONDS = 0.5
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--vms", type=int, default=20_000)
    parser.add_argument("--sick-share", type=float, default=0.03)
    parser.add_argument("--spares", type=int, default=4)
    parser.add_argument("--reserve-fraction", type=float, default=0.05)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    started = time.perf_counter()
    cloud = simulate_cloud(
        hosts=args.hosts,
        vms=args.vms,
        sick_share=args.sick_share,
        seed=args.seed,
        now=NOW,
        spares=args.spares,
    )
    built_seconds = time.perf_counter() - started
    policy = PlacementPolicy(
        stale_after_seconds=90, reserve_fraction=args.reserve_fraction, preferred=cloud.spares
    )
    print(
        f"cloud: {len(cloud.hosts)} hosts ({len(cloud.sick)} sick, {len(cloud.spares)} spares preferred), "
        f"{len(cloud.running)} VMs, {len(cloud.moving)} to move; reserve {args.reserve_fraction:.0%}; "
        f"seed {args.seed} (built in {built_seconds:.2f} s)"
    )

    seconds: list[float] = []
    results: list[Placement] = []
    for _ in range(args.runs):
        started = time.perf_counter()
        results.append(plan(cloud.hosts, cloud.moving, policy, NOW))
        seconds.append(time.perf_counter() - started)
    median = statistics.median(seconds)
    verdict = "met" if median < GOAL_MEDIAN_SECONDS else "MISSED"
    print(
        f"plan: median {median * 1000:.1f} ms, worst {max(seconds) * 1000:.1f} ms over {args.runs} runs "
        f"({'/'.join(f'{s * 1000:.1f}' for s in seconds)} ms); "
        f"goal < {GOAL_MEDIAN_SECONDS} s median: {verdict}"
    )

    result = results[0]
    same = all(r == result for r in results)
    violations = check(cloud.hosts, cloud.moving, policy, NOW, result)
    print(f"checker: {len(violations)} violations (must be 0); every run the same plan: {same}")
    for violation in violations[:10]:
        print(f"  {violation.kind}: {violation.vm_uuids} on {violation.host}: {violation.detail}")

    moving = len(cloud.moving)
    placed = len(result.assignments)
    reasons = Counter(str(reason) for reason in result.unplaced.values())
    print(
        f"placed: {placed}/{moving} ({placed / moving if moving else 1.0:.1%}); unplaced by reason: "
        f"{dict(sorted(reasons.items())) or 'none'}"
    )
    per_host = Counter(result.assignments.values())
    on_spares = sum(per_host[name] for name in cloud.spares)
    print(
        f"destinations: {len(per_host)} hosts, {on_spares} VMs onto the {len(cloud.spares)} spares, "
        f"most onto one host {max(per_host.values(), default=0)}"
    )
    return 0 if not violations and median < GOAL_MEDIAN_SECONDS else 1


if __name__ == "__main__":
    raise SystemExit(main())
