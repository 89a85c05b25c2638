"""An open-loop load generator: requests leave at a fixed rate whether or not earlier ones have
been answered, and each latency counts from when its request was *due*, so queueing in the server
shows (a closed-loop tool, which waits for an answer before sending the next, hides it).

    python -m bench.openloop --port 8000 --key clk_… --rate 1000 --seconds 10 --subjects 1000 \\
        [--write-every 10 --write-offset 500000] [--reference] [--timeline]

Reads are ``GET /v1/checks`` for a random subject; with ``--write-every N`` every N-th request is
a withdrawal (``PUT …/consents/gender/service_improvement``) for a subject not used before. With
``--reference``, against the reference app (``bench.reference``): reads are ``GET /pk``, writes
``PUT /write``, the same mix with the least a read and a durable write can cost.

Prints one JSON object: the percentiles per kind, in milliseconds, and how late the generator
itself started its latest request (with ``--timeline``, also the slowest request, the slowest
read and the latest start of each second, to see when a tail happened, whether the reads had it
and whether the generator's was part of it: with writes, the slowest request of a second is most
often a write waiting for its commit).
"""

import argparse
import asyncio
import json
import random
import time

from bench.seed import subject_id

POOL = 256  # connections at most; a request waits for one, and that wait is counted
# The latencies' clock. Not the event loop's: uvloop's counts whole milliseconds, and only as of
# the loop's latest turn, which put an error of up to a millisecond and more on every latency
# (found on 2026-11-27, in an eleventh session: BENCHMARKS.md).
clock = time.perf_counter


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)

    return {"n": len(ordered), "p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "p999": at(0.999),
            "max": round(ordered[-1] * 1000, 3)}  # fmt: skip


async def run(args: argparse.Namespace) -> dict[str, object]:
    idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    opened = 0
    latencies: dict[str, list[float]] = {"read": [], "write": []}
    errors: dict[str, int] = {}
    slowest: dict[int, float] = {}  # per second of the run (by when requests were due)
    slowest_read: dict[int, float] = {}  # the same, of the reads alone
    lag: dict[int, float] = {}  # per second: the latest start of a request after its due time
    auth = f"Authorization: Bearer {args.key}\r\n"
    host = f"Host: {args.host}:{args.port}\r\n"

    async def connection() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        nonlocal opened
        if idle.empty() and opened < POOL:
            opened += 1
            return await asyncio.open_connection(args.host, args.port)
        return await idle.get()

    def request(i: int) -> tuple[str, bytes]:
        if args.write_every and i % args.write_every == args.write_every - 1:
            sid = subject_id(args.write_offset + i // args.write_every)
            if args.reference:
                return "write", (f"PUT /write?subject_id={sid} HTTP/1.1\r\n{host}"
                                 "content-length: 0\r\n\r\n").encode()  # fmt: skip
            body = b'{"state":"withdrawn"}'
            head = (f"PUT /v1/subjects/{sid}/consents/gender/service_improvement HTTP/1.1\r\n"
                    f"{host}{auth}content-type: application/json\r\n"
                    f"content-length: {len(body)}\r\n\r\n")  # fmt: skip
            return "write", head.encode() + body
        sid = subject_id(random.randrange(args.subjects))
        if args.reference:
            return "read", f"GET /pk?subject_id={sid} HTTP/1.1\r\n{host}\r\n".encode()
        head = (f"GET /v1/checks?subject_id={sid}&target=gender&purpose=service_improvement "
                f"HTTP/1.1\r\n{host}{auth}\r\n")  # fmt: skip
        return "read", head.encode()

    async def one(i: int, due: float) -> None:
        # The generator's own lateness: how long after its due time its task began (a wait
        # for a free connection, which a stalled server causes, is not counted here).
        second = int(due - start)  # of the run, by when the request was due
        lag[second] = max(lag.get(second, 0.0), clock() - due)
        kind, payload = request(i)
        reader, writer = await connection()
        try:
            writer.write(payload)
            head = await reader.readuntil(b"\r\n\r\n")
            status = head[9:12].decode()
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
        except Exception as exc:  # counted, and the connection is dropped
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            writer.close()
            nonlocal opened
            opened -= 1
            return
        latencies[kind].append(clock() - due)
        if args.timeline:
            slowest[second] = max(slowest.get(second, 0.0), clock() - due)
            if kind == "read":
                slowest_read[second] = max(slowest_read.get(second, 0.0), clock() - due)
        if not status.startswith("2"):
            errors[f"HTTP {status}"] = errors.get(f"HTTP {status}", 0) + 1
        idle.put_nowait((reader, writer))

    total = int(args.rate * args.seconds)
    tasks = set()
    start = clock() + 0.2
    for i in range(total):
        due = start + i / args.rate
        delay = due - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(i, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    sent_in = clock() - start
    await asyncio.gather(*tasks)
    return {
        "rate": args.rate,
        "sent_in_s": round(sent_in, 2),
        "read": percentiles(latencies["read"]),
        "write": percentiles(latencies["write"]),
        "errors": errors,
        # A latency counts from when its request was due, so a generator that falls behind
        # (a busy machine) adds its own delay: this says how much of a tail is its own.
        "latest_start_ms": round(max(lag.values(), default=0.0) * 1000, 1),
        **(
            {
                "slowest_per_second": [
                    round(slowest.get(i, 0) * 1000, 1) for i in range(int(args.seconds))
                ],
                "slowest_read_per_second": [
                    round(slowest_read.get(i, 0) * 1000, 1) for i in range(int(args.seconds))
                ],
                "latest_start_per_second": [
                    round(lag.get(i, 0) * 1000, 1) for i in range(int(args.seconds))
                ],
            }
            if args.timeline
            else {}
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key", default="")
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--subjects", type=int, required=True)
    parser.add_argument("--write-every", type=int, default=0)
    parser.add_argument("--write-offset", type=int, default=0)
    parser.add_argument(
        "--reference",
        action="store_true",
        help="against bench.reference: reads GET /pk, writes PUT /write (no key needed)",
    )
    parser.add_argument(
        "--timeline", action="store_true", help="also the slowest latency of each second, ms"
    )
    args = parser.parse_args()
    if not args.key and not args.reference:
        parser.error("--key is needed against the service (not with --reference)")
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    started = time.monotonic()
    result = asyncio.run(run(args))
    result["wall_s"] = round(time.monotonic() - started, 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
