"""Versions side by side on the checks' tail with writes: ``python -m bench.mixed TREE [TREE …]``.

Like ``bench.sidebyside`` (one database, PostgreSQL's or a SQLite file (``--backend``), migrated
and seeded as by the harness, one server per TREE serving that TREE's code, one worker,
production settings, the order of the versions reversed every other round), but each round
measures, for every version in turn: consent changes with ``wrk -c16`` (withdrawals of seeded
consents, each subject used once) with the worker's CPU time per change, then the check's
latency open-loop at a fixed rate, read-only and with every 10th request a withdrawal, with the
share of a core each took of the worker. Prints each run and each version's medians.
"""

import argparse
import statistics
import tempfile
from contextlib import ExitStack
from pathlib import Path

from bench.__main__ import lua_writes, machine, openloop, prepared, server_env, serving, wrk

READERS = 1_000  # the subjects the checks ask about
WRITE_SECONDS, OPEN_SECONDS = 5, 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", nargs="+", type=Path)
    parser.add_argument("--backend", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--rate", type=int, default=800, help="checks per second, open-loop")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--max-writes", type=int, default=6_000, help="per wrk run, at most")
    args = parser.parse_args()
    per_mixed = args.rate * OPEN_SECONDS // 10 + 50
    per_version = args.max_writes + per_mixed
    subjects = READERS + args.rounds * len(args.trees) * per_version
    print(machine(), flush=True)
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        url, key = prepared(args.backend, Path(tmp), "mixed", subjects, 10)
        env = server_env(url)
        apps = [
            stack.enter_context(serving("app.main:create_app", env, 1, "/healthz", tree.resolve()))
            for tree in args.trees
        ]
        unused = READERS  # the next seeded subject no request has written to
        found: dict[str, list[list[float]]] = {
            kind: [[] for _ in apps]
            for kind in ("writes/s", "µs per write", "ro p99", "p99", "ro busy", "busy")
        }
        for n in range(args.rounds):
            order = list(range(len(apps)))
            if n % 2:
                order.reverse()
            for i in order:
                app = apps[i]
                used = app.cpu_seconds()
                script = lua_writes(unused, args.max_writes // 2, False)
                done = wrk(app, "/", key, WRITE_SECONDS, 16, script)
                used = app.cpu_seconds() - used
                if done["non_2xx"] or done["socket_errors"]:
                    raise SystemExit(f"{args.trees[i]}: failed writes: {done}")
                if done["requests"] > args.max_writes:
                    raise SystemExit(f"more than {args.max_writes} writes: raise --max-writes")
                unused += args.max_writes
                read_only = openloop(app, key, args.rate, OPEN_SECONDS, READERS)
                mixed = openloop(
                    app,
                    key,
                    args.rate,
                    OPEN_SECONDS,
                    READERS,
                    write_every=10,
                    write_offset=unused,
                )
                unused += per_mixed
                ro_p99 = float(read_only["read"]["p99"])  # type: ignore[index]
                p99 = float(mixed["read"]["p99"])  # type: ignore[index]
                # The share of a core each open-loop run took of the worker (all its threads).
                ro_busy = float(read_only["worker_busy"])  # type: ignore[arg-type]
                busy = float(mixed["worker_busy"])  # type: ignore[arg-type]
                figures = (
                    done["rps"],
                    used / max(1, done["requests"]) * 1e6,
                    ro_p99,
                    p99,
                    ro_busy,
                    busy,
                )
                for kind, value in zip(found, figures, strict=True):
                    found[kind][i].append(value)
                print(
                    f"  round {n + 1}, {args.trees[i]}: {done['rps']:,.0f} writes/s, "
                    f"{figures[1]:,.0f} µs of CPU each; check p99 read-only {ro_p99} ms, "
                    f"with writes {p99} ms; the worker's share of a core {ro_busy} and {busy}",
                    flush=True,
                )
    for i, tree in enumerate(args.trees):
        medians = {kind: statistics.median(values[i]) for kind, values in found.items()}
        print(
            f"{tree}: writes/s {medians['writes/s']:,.0f}, {medians['µs per write']:,.0f} µs each; "
            f"check p99 read-only {medians['ro p99']:.1f} ms, with writes {medians['p99']:.1f} "
            f"ms (medians of {args.rounds}; ratio of the medians "
            f"{medians['p99'] / medians['ro p99']:.2f}); the worker's share of a core "
            f"{medians['ro busy']:.2f} read-only, {medians['busy']:.2f} with writes"
        )


if __name__ == "__main__":
    main()
