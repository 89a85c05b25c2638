"""Versions of the service side by side: ``python -m bench.sidebyside TREE [TREE …]``.

Each TREE is a checkout of the project (e.g. ``git worktree add ../before HEAD~1``), all of them
with the same schema. One database is migrated and seeded as by the harness, the reference app
and one server per TREE (each serving that TREE's code, one worker, production settings) start
together, and then, round after round, ``/bare``, every version's single check and every
version's batch of 20 are measured with ``wrk -c64`` in turn, the order of the versions reversed
every other round, so that the machine's drift falls on all of them alike. Prints each run and
each version's medians: checks/s and ÷ bare, batches/s and the batch's cost in single checks,
and the worker's CPU time per request (from /proc), which a noisy machine disturbs far less.
"""

import argparse
import statistics
import tempfile
from contextlib import ExitStack
from pathlib import Path

from bench.__main__ import (
    CHECK,
    batch_pairs,
    lua_batch,
    lua_random,
    machine,
    prepared,
    server_env,
    serving,
    wrk,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", nargs="+", type=Path)
    parser.add_argument("--backend", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--subjects", type=int, default=1_000)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    scripts = {
        "check": lua_random(CHECK, args.subjects),
        "batch": lua_batch(args.subjects, batch_pairs()),
    }
    print(machine(), flush=True)
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        url, key = prepared(args.backend, Path(tmp), "sidebyside", args.subjects, 10)
        env = server_env(url)
        reference = stack.enter_context(serving("bench.reference:app", env, 1, "/bare"))
        apps = [
            stack.enter_context(serving("app.main:create_app", env, 1, "/healthz", tree.resolve()))
            for tree in args.trees
        ]
        bare: list[float] = []
        runs: dict[tuple[int, str], list[float]] = {}
        cpu: dict[tuple[int, str], list[float]] = {}  # the worker's CPU µs per request
        for n in range(args.rounds):
            bare.append(wrk(reference, "/bare", None, args.seconds, 64)["rps"])
            order = list(range(len(apps)))
            if n % 2:
                order.reverse()
            for kind, script in scripts.items():
                for i in order:
                    used = apps[i].cpu_seconds()
                    done = wrk(apps[i], "/", key, args.seconds, 64, script)
                    used = apps[i].cpu_seconds() - used
                    if done["non_2xx"] or done["socket_errors"]:
                        raise SystemExit(f"{args.trees[i]} {kind}: failed requests: {done}")
                    runs.setdefault((i, kind), []).append(done["rps"])
                    cpu.setdefault((i, kind), []).append(used / max(1, done["requests"]) * 1e6)
            print(f"  round {n + 1}: bare {bare[-1]:,.0f}", flush=True)
    base = statistics.median(bare)
    print(f"bare: {', '.join(f'{r:,.0f}' for r in bare)} (median {base:,.0f}/s)")
    for i, tree in enumerate(args.trees):
        check, batch = runs[(i, "check")], runs[(i, "batch")]
        c, b = statistics.median(check), statistics.median(batch)
        c_cpu, b_cpu = statistics.median(cpu[(i, "check")]), statistics.median(cpu[(i, "batch")])
        print(
            f"{tree}: check {', '.join(f'{r:,.0f}' for r in check)} (median {c:,.0f}/s, "
            f"÷ bare {c / base:.3f}); batch {', '.join(f'{r:,.0f}' for r in batch)} "
            f"(median {b:,.0f}/s, cost {c / b:.2f} checks); worker CPU per request: "
            f"check {c_cpu:.0f} µs, batch {b_cpu:.0f} µs (ratio {b_cpu / c_cpu:.2f}; the "
            "database's share not counted)"
        )


if __name__ == "__main__":
    main()
