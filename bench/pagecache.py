"""The machine alone, at the scale step's pace: ``python -m bench.pagecache [--big FILE]``.

A loop that runs none of the service's code and asks of the machine what a SQLite check on the
1M-subject file asks of it: a few 4-KiB reads from the OS's page cache, at random places in a
file, then some work on the CPU, one unit after another at a fixed rate, open-loop: each unit's
latency counts from when it was due, so a pause of the machine shows as the backlog it leaves,
as it does for the server's one event loop. It runs on a file of a few MB and on a large one
(the 1M-subject file, or a file of random bytes made for the run) in turns, each held in memory
through its run, as the scale step's databases are: the same system calls and the same work,
only the size of the memory the reads fall in differs. A third kind of run does the work with
no reads.

Prints each run: the units' p50 / p99 / slowest, how many seconds had a unit later than 100 ms,
the slowest unit's own time (its reads, its work), the process's share of a core, and what the
machine read from disk. Then each kind's median p99 and the ratios.
"""

import argparse
import json
import os
import random
import statistics
import tempfile
import time
import timeit
from array import array
from pathlib import Path
from typing import Any

from bench.__main__ import disk_reads, machine, mapped
from bench.openloop import percentiles

PAGE = 4096
STALL = 0.1  # a second with a unit this late counts as a stall, as in BENCHMARKS.md


def made_file(path: Path, size: int) -> None:
    """``size`` bytes of random data at ``path`` (random, so no layer below can compress or
    share its pages)."""
    chunk = 1 << 24
    with open(path, "wb") as file:
        for _ in range(size // chunk):
            file.write(os.urandom(chunk))
        file.write(os.urandom(size % chunk))
        os.fsync(file.fileno())  # written back now, not during the first runs


def loops_for(seconds: float) -> int:
    """How long a ``sum(range(n))`` takes ``seconds`` on this machine now."""
    once = min(timeit.repeat("sum(range(1000))", number=200, repeat=5)) / 200
    return max(1, round(1000 * seconds / once))


def one_run(
    path: Path | None, rate: float, seconds: float, reads: int, work: int, seed: int
) -> dict[str, Any]:
    """Units at ``rate`` per second for ``seconds``: ``reads`` page reads at random in ``path``
    (none without one), then ``sum(range(work))``."""
    fd = os.open(path, os.O_RDONLY) if path else -1
    pages = os.fstat(fd).st_size // PAGE if path else 0
    draw = random.Random(seed).randrange  # other pages each round
    count = int(rate * seconds)
    late, reading, working = array("d"), array("d"), array("d")
    clock, pread = time.perf_counter, os.pread
    disk, cpu = disk_reads(), time.process_time()
    start = clock() + 0.05
    try:
        for i in range(count):
            due = start + i / rate
            gap = due - clock()
            if gap > 0:
                time.sleep(gap)  # idle, as the server's loop waits in epoll
            begun = clock()
            for _ in range(reads if path else 0):
                pread(fd, PAGE, draw(pages) * PAGE)
            read = clock()
            sum(range(work))
            done = clock()
            late.append(done - due)
            reading.append(read - begun)
            working.append(done - read)
    finally:
        if path:
            os.close(fd)
    wall = clock() - start
    busy = (time.process_time() - cpu) / wall
    after = disk_reads()
    worst: dict[int, float] = {}
    for i, value in enumerate(late):
        second = int(i / rate)
        worst[second] = max(worst.get(second, 0.0), value)
    slowest = max(range(count), key=lambda i: reading[i] + working[i])
    units, reads_ms, work_ms = (percentiles(list(times)) for times in (late, reading, working))
    return {
        "p50": units["p50"],
        "p99": units["p99"],
        "max": round(units["max"], 1),
        "stall seconds": sum(value > STALL for value in worst.values()),
        "slowest unit ms (reads, work)": [
            round(reading[slowest] * 1e3, 2),
            round(working[slowest] * 1e3, 2),
        ],
        "unit mean µs (reads, work)": [
            round(sum(reading) / count * 1e6),
            round(sum(working) / count * 1e6),
        ],
        "unit p99 µs (reads, work)": [round(reads_ms["p99"] * 1e3), round(work_ms["p99"] * 1e3)],
        "busy": round(busy, 2),
        "disk MB": round((after - disk) / 1e6, 1)
        if disk is not None and after is not None
        else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--big", type=Path, help="the large file (default: random bytes, made)")
    parser.add_argument("--big-gb", type=float, default=6.0, help="the size of the one made")
    parser.add_argument("--small-mb", type=float, default=8.0)
    parser.add_argument("--rate", type=float, default=2400, help="units per second")
    parser.add_argument("--reads", type=int, default=7, help="page reads per unit")
    parser.add_argument("--work-us", type=float, default=300, help="CPU work per unit, µs")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--json", type=Path, help="also write every run here")
    args = parser.parse_args()
    print(machine(), flush=True)
    work = loops_for(args.work_us / 1e6)
    with tempfile.TemporaryDirectory() as tmp:
        small = Path(tmp) / "small"
        made_file(small, int(args.small_mb * 1e6) // PAGE * PAGE)
        big = args.big
        if big is None:
            big = Path(tmp) / "big"
            started = time.monotonic()
            made_file(big, int(args.big_gb * 1e9) // PAGE * PAGE)
            print(f"made {big.stat().st_size / 1e9:.1f} GB in {time.monotonic() - started:.0f} s")
        files: dict[str, Path | None] = {"none": None, "small": small, "big": big}
        runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in files}
        for n in range(args.rounds):
            for kind in list(files)[:: -1 if n % 2 else 1]:
                path = files[kind]
                with mapped([path] if path else []):  # held in memory, as the scale step's
                    found = one_run(path, args.rate, args.seconds, args.reads, work, n)
                runs[kind].append(found)
                print(f"round {n + 1} {kind:5} {json.dumps(found, ensure_ascii=False)}", flush=True)
    medians = {kind: statistics.median(run["p99"] for run in r) for kind, r in runs.items()}
    stalls = {kind: sum(run["stall seconds"] > 0 for run in r) for kind, r in runs.items()}
    print(f"median p99 ms: {medians}; runs with a stall: {stalls} of {args.rounds} each")
    print(
        f"big ÷ small: {medians['big'] / medians['small']:.2f}; "
        f"small ÷ none: {medians['small'] / medians['none']:.2f}"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"args": vars(args) | {"big": str(big), "json": None}, "runs": runs},
                indent=1,
                default=str,
            )
        )


if __name__ == "__main__":
    main()
