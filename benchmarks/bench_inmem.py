"""In-memory benchmark: chain of 200 no-op nodes and a 1→200→1 fan, async and sync nodes.

Usage: python benchmarks/bench_inmem.py [--reps 5] [--loop 50] [--rounds 3] [--ts] [--out FILE]

Reports nodes/s (min and median over repetitions) and, with ``--ts`` where Node.js is present,
runs the TypeScript Flowcraft on the same shapes after each round of ours and prints ours/TS,
per round and as the median of the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from flowcraft import Flow, FlowRuntime, NodeContext, create_flow

HERE = Path(__file__).resolve().parent
ANCHOR = HERE / "ts-anchor"
ANCHOR_WORK = HERE / ".anchor"


async def noop_async(ctx: NodeContext) -> int:
    value = ctx.input
    return (value if isinstance(value, int) else 0) + 1


def noop_sync(ctx: NodeContext) -> int:
    value = ctx.input
    return (value if isinstance(value, int) else 0) + 1


def chain(n: int, impl: Any) -> Flow:
    flow = create_flow(f"chain{n}")
    for i in range(n):
        flow.node(f"n{i}", impl)
    for i in range(1, n):
        flow.edge(f"n{i - 1}", f"n{i}")
    return flow


def fan(width: int, impl: Any) -> Flow:
    flow = create_flow(f"fan{width}").node("start", impl)
    for i in range(width):
        flow.node(f"p{i}", impl).edge("start", f"p{i}").edge(f"p{i}", "join")
    return flow.node("join", impl, config={"joinStrategy": "all"})


async def measure(flow: Flow, nodes: int, reps: int, loop: int) -> dict[str, Any]:
    runtime = FlowRuntime()
    blueprint = flow.to_blueprint()
    registry = flow.function_registry
    for _ in range(10):
        result = await runtime.run(blueprint, function_registry=registry)
        if result.status != "completed":
            raise RuntimeError(f"{blueprint.id}: {result.status} {result.errors}")
    single = []
    for _ in range(reps):
        t0 = time.perf_counter()
        await runtime.run(blueprint, function_registry=registry)
        single.append(time.perf_counter() - t0)
    loops = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(loop):
            await runtime.run(blueprint, function_registry=registry)
        loops.append(loop / (time.perf_counter() - t0))
    return {
        "nodes": nodes,
        "single_ms": [s * 1000 for s in single],
        "nodes_per_s_median": nodes / statistics.median(single),
        "nodes_per_s_best": nodes / min(single),
        "loop_nodes_per_s_median": statistics.median(loops) * nodes,
        "loop_nodes_per_s_min": min(loops) * nodes,
        "loop_nodes_per_s_best": max(loops) * nodes,
    }


def prepare_anchor() -> str | None:
    """The path of ``node`` once the anchor is installed in ANCHOR_WORK; None without Node.js."""
    node = shutil.which("node")
    npm = shutil.which("npm")
    if node is None or npm is None:
        print("TS anchor: Node.js not found, skipped")
        return None
    ANCHOR_WORK.mkdir(exist_ok=True)
    shutil.copy(ANCHOR / "package.json", ANCHOR_WORK / "package.json")
    shutil.copytree(ANCHOR / "bench", ANCHOR_WORK / "bench", dirs_exist_ok=True)
    if not (ANCHOR_WORK / "node_modules" / "flowcraft").exists():
        subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--silent"], cwd=ANCHOR_WORK, check=True
        )
    return node


def run_ts(reps: int, loop: int) -> dict[str, Any] | None:
    node = prepare_anchor()
    if node is None:
        return None
    proc = subprocess.run(
        [node, "bench/inmem.mjs", "--reps", str(reps), "--loop", str(loop)],
        cwd=ANCHOR_WORK,
        check=True,
        capture_output=True,
        text=True,
    )
    print(proc.stdout.strip())
    line = next(x for x in proc.stdout.splitlines() if x.startswith("JSON "))
    data: dict[str, Any] = json.loads(line[5:])
    return data


def ratios_vs_ts(ours: dict[str, Any], ts: dict[str, Any] | None) -> dict[str, Any]:
    """ours/TS per shape: loop medians (typical runs) and bests (runs least disturbed)."""
    if ts is None:
        return {}
    ratios = {}
    for shape, nodes in (("chain200", 200), ("fan200", 202)):
        ts_median = statistics.median(ts[shape]["loop_runs_per_s"]) * nodes
        ts_best = max(ts[shape]["loop_runs_per_s"]) * nodes
        for variant in (shape, f"{shape}-sync"):
            median = ours[variant]["loop_nodes_per_s_median"] / ts_median
            best = ours[variant]["loop_nodes_per_s_best"] / ts_best
            ratios[variant] = {"median": median, "best": best}
            print(
                f"ratio ours/TS {variant:14s} median {median:5.2f} best {best:5.2f}"
                f"  (TS median {ts_median:7.0f}, best {ts_best:7.0f} nodes/s)"
            )
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--loop", type=int, default=50)
    parser.add_argument("--ts", action="store_true", help="also run the TypeScript anchor")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of ours, then the anchor")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "inmem.json")
    args = parser.parse_args()

    shapes = {
        "chain200": (chain(200, noop_async), 200),
        "fan200": (fan(200, noop_async), 202),
        "chain200-sync": (chain(200, noop_sync), 200),
        "fan200-sync": (fan(200, noop_sync), 202),
    }
    print(f"python {platform.python_version()} cpus={os.cpu_count()} {platform.platform()}")
    # This VM's speed drifts within minutes: each round measures every shape, then the anchor,
    # and a ratio divides a round's figure by the anchor's figure of the same round.
    rounds: list[dict[str, Any]] = []
    for number in range(1, args.rounds + 1):
        print(f"round {number}/{args.rounds}")
        ours: dict[str, Any] = {}
        for name, (flow, nodes) in shapes.items():
            ours[name] = stats = asyncio.run(measure(flow, nodes, args.reps, args.loop))
            print(
                f"{name:14s} single run: nodes/s median {stats['nodes_per_s_median']:9.0f}"
                f" best {stats['nodes_per_s_best']:9.0f} | {args.loop}-run loop: nodes/s median"
                f" {stats['loop_nodes_per_s_median']:9.0f}"
                f" min {stats['loop_nodes_per_s_min']:9.0f}"
            )
        ts = run_ts(args.reps, args.loop) if args.ts else None
        rounds.append({"python": ours, "ts": ts, "ratios_vs_ts": ratios_vs_ts(ours, ts)})
    report: dict[str, Any] = {"rounds": rounds, "argv": sys.argv[1:]}
    if all(r["ratios_vs_ts"] for r in rounds):
        summary = {}
        print(f"ratios ours/TS over {len(rounds)} rounds (median of the rounds' ratios):")
        for variant in rounds[0]["ratios_vs_ts"]:
            median = statistics.median(r["ratios_vs_ts"][variant]["median"] for r in rounds)
            best = statistics.median(r["ratios_vs_ts"][variant]["best"] for r in rounds)
            per_round = " ".join(f"{r['ratios_vs_ts'][variant]['median']:.2f}" for r in rounds)
            summary[variant] = {"median": median, "best": best}
            print(
                f"ratio ours/TS {variant:14s} median {median:5.2f} best {best:5.2f}"
                f"  (medians by round: {per_round})"
            )
        report["ratios_vs_ts"] = summary
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
