"""The benchmark harness: ``python -m bench [--quick]``. See BENCHMARKS.md.

For each backend (SQLite, the embedded default, in a temporary directory; PostgreSQL in a scratch
database that is dropped and made again): generate data, start the real server as production runs
it (uvicorn with httptools and uvloop, no access log) and, on the same settings, the reference app
(a constant; one raw-driver primary-key lookup; one row inserted and committed); drive load from
other processes (wrk for throughput, ``bench.openloop`` at a fixed rate for latency); print the
results as BENCHMARKS.md's table and, with ``--json FILE``, write them raw. Needs ``wrk``
(Debian: ``apt-get install wrk``).
"""

import argparse
import json
import math
import mmap
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import timeit
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from app.catalogue.loader import load_catalogue
from bench.seed import checkpoint, libpq_url, seed, sqlite_path

ROOT = Path(__file__).resolve().parents[1]
SECRET = "bench-" + os.urandom(24).hex()
PG_ADMIN = os.environ.get("BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
PG_DB = "consent_ledger_bench"


@dataclass
class Plan:
    subjects: int
    events_per_subject: int
    big_subjects: int  # the scale comparison's large database
    seconds: float  # per wrk or open-loop run
    stale_rounds: int
    writers: int  # subjects whose seeded consent the write runs withdraw, one each
    connections: int = 64

    @property
    def seeded(self) -> int:
        """Readers first (bench-00000000…), then the writers' subjects."""
        return self.subjects + self.writers


QUICK = Plan(
    subjects=1_000,
    events_per_subject=10,
    big_subjects=20_000,
    seconds=3,
    stale_rounds=200,
    writers=80_000,  # enough for 4,000 changes/s in the 2-s write runs
)
FULL = Plan(
    subjects=1_000,
    events_per_subject=10,
    big_subjects=1_000_000,
    seconds=10,
    stale_rounds=10_000,
    # The mixed runs take a sixth of them at up to ~11,000 checks/s, each write run a sixth of
    # the last two thirds, ~8,800 changes/s for 5 s (a fast machine checked 10,348/s on SQLite:
    # 150,000 were too few for its mixed runs).
    writers=400_000,
)


@dataclass
class Results:
    backend: str
    rows: dict[str, dict[str, object]] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run(command: list[str], env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        command, env={**os.environ, **(env or {})}, cwd=ROOT, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


class Server(str):
    """A served app's base URL (it is the string), and the process that serves it."""

    pid: int
    workers: int

    def cpu_seconds(self) -> float:
        """The CPU time, user and system, that the server has used so far (Linux). Only with
        one worker: the process is then the worker, not a supervisor of others."""
        assert self.workers == 1, "a supervisor's own time is not its workers'"
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def serving(
    factory: str, env: dict[str, str], workers: int, probe: str, cwd: Path = ROOT
) -> Iterator[Server]:
    """uvicorn as production runs it, serving the code under ``cwd``; yields the base URL (with
    the server's process) once ``probe`` answers."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        factory,
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--http",
        "httptools",
        "--loop",
        "uvloop",
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            command, env={**os.environ, **env}, cwd=cwd, stdout=log, stderr=subprocess.STDOUT
        )
        server = Server(f"http://127.0.0.1:{port}")
        server.pid, server.workers = process.pid, workers
        yield from _until_ready(process, log, server, factory, probe)


def _until_ready(
    process: subprocess.Popen[bytes], log: IO[bytes], base: Server, factory: str, probe: str
) -> Iterator[Server]:
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                log.seek(0)
                raise SystemExit(f"{factory} did not start:\n{log.read().decode()}")
            try:
                if httpx.get(base + probe, timeout=1).status_code < 500:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{factory} did not answer {probe}")
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def lua_random(path_template: str, subjects: int) -> str:
    return textwrap.dedent(f"""
        math.randomseed(os.time() + math.random(1000))
        request = function()
          local sid = string.format("bench-%08d", math.random(0, {subjects - 1}))
          return wrk.format(nil, string.format("{path_template}", sid))
        end
    """)


def lua_batch(subjects: int, pairs: list[tuple[str, str]]) -> str:
    items = ",".join(f'{{"target":"{t}","purpose":"{p}"}}' for t, p in pairs)
    return textwrap.dedent(f"""
        math.randomseed(os.time() + math.random(1000))
        wrk.method = "POST"
        wrk.headers["content-type"] = "application/json"
        request = function()
          local sid = string.format("bench-%08d", math.random(0, {subjects - 1}))
          local body = '{{"subject_id":"' .. sid .. '","items":[{items}]}}'
          return wrk.format(nil, "/v1/checks", nil, body)
        end
    """)


def lua_writes(first: int, per_thread: int, idempotent: bool) -> str:
    """Each request withdraws the seeded `gender` consent of a subject no other request uses."""
    # One key per subject: unique across every run of the harness on one database.
    key = 'wrk.headers["idempotency-key"] = "bench-" .. sid' if idempotent else ""
    return textwrap.dedent(f"""
        local threads = 0
        setup = function(thread) thread:set("id", threads); threads = threads + 1 end
        local n = 0
        wrk.method = "PUT"
        wrk.headers["content-type"] = "application/json"
        wrk.body = '{{"state":"withdrawn"}}'
        request = function()
          n = n + 1
          local sid = string.format("bench-%08d", {first} + id * {per_thread} + n)
          {key}
          return wrk.format(nil, "/v1/subjects/" .. sid .. "/consents/gender/service_improvement")
        end
    """)


def wrk(
    base: str,
    path: str,
    key: str | None,
    seconds: float,
    connections: int,
    script: str | None = None,
) -> dict[str, float]:
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if key:
        command += ["-H", f"Authorization: Bearer {key}"]
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as lua:
        if script:
            lua.write(script)
            lua.flush()
            command += ["-s", lua.name]
        output = run([*command, base + path])
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output)[1])  # type: ignore[index]
    requests = int(re.search(r"(\d+) requests in", output)[1])  # type: ignore[index]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: (.*)", output)
    return {
        "rps": round(rps, 1),
        "requests": requests,
        "non_2xx": int(non_2xx[1]) if non_2xx else 0,
        "socket_errors": errors[1] if errors else "",  # type: ignore[dict-item]
    }


def openloop(
    base: str,
    key: str,
    rate: float,
    seconds: float,
    subjects: int,
    write_every: int = 0,
    write_offset: int = 0,
    timeline: bool = False,
    reference: bool = False,
) -> dict[str, object]:
    port = base.rsplit(":", 1)[1]
    # A one-worker server's CPU time (all its threads) over the run, divided by the run's wall
    # time: the share of a core the fixed rate took. A request that arrives alone costs the
    # worker more than one among wrk's 64 connections (a 2026-11-27 thirteenth session's
    # machine: the check 377 µs at 2,404/s against 256-331 µs under wrk, `/bare` 245 against
    # 145-167), so a rate of half the maximum can take most of a core.
    counted = base if isinstance(base, Server) and base.workers == 1 else None
    cpu_before = counted.cpu_seconds() if counted is not None else 0.0
    output = run(
        [
            sys.executable,
            "-m",
            "bench.openloop",
            "--port",
            port,
            "--key",
            key,
            "--rate",
            str(rate),
            "--seconds",
            str(seconds),
            "--subjects",
            str(subjects),
            "--write-every",
            str(write_every),
            "--write-offset",
            str(write_offset),
            *(["--timeline"] if timeline else []),
            *(["--reference"] if reference else []),
        ]
    )
    result: dict[str, object] = json.loads(output)
    wall = result.get("wall_s")
    if counted is not None and isinstance(wall, int | float):
        result["worker_busy"] = round((counted.cpu_seconds() - cpu_before) / wall, 2)
    return result


TURNS = 3  # runs of each kind in the throughput, latency and scale steps, in turns


def median_run(runs: list[Any], measure: Callable[[Any], float]) -> Any:
    """Of TURNS runs of one kind, the one whose ``measure`` is the median: the run that counts."""
    return sorted(runs, key=measure)[TURNS // 2]


REUSE = False  # --reuse: keep a PostgreSQL database that already holds the data asked for


def _pg(db: str) -> str:
    return PG_ADMIN.rsplit("/", 1)[0] + f"/{db}"


def _holds(db: str, subjects: int) -> bool:
    found = subprocess.run(
        ["psql", _pg(db), "-tAc", "SELECT count(*) FROM subject WHERE id LIKE 'bench-%'"],
        capture_output=True,
        text=True,
    )
    return found.returncode == 0 and found.stdout.strip() == str(subjects)


def prepared(
    backend: str, workdir: Path, name: str, subjects: int, per_subject: int
) -> tuple[str, str]:
    """A migrated database with ``subjects`` generated subjects, settled, and an app key."""
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{workdir / (name + '.db')}"
    else:
        db = f"{PG_DB}_{name}"
        url = _pg(db).replace("postgresql://", "postgresql+asyncpg://")
    env = {"DATABASE_URL": url, "CONSENT_LEDGER_SECRET_KEY": SECRET}
    if backend == "sqlite" or not (REUSE and _holds(db, subjects)):
        if backend != "sqlite":
            for statement in (f"DROP DATABASE IF EXISTS {db}", f"CREATE DATABASE {db}"):
                run(["psql", PG_ADMIN, "-q", "-c", statement])
        run([sys.executable, "-m", "app.cli", "migrate"], env)
        started = time.monotonic()
        seed(url, subjects, per_subject)
        print(
            f"  seeded {subjects:,} subjects, {subjects * per_subject:,} events "
            f"in {time.monotonic() - started:.0f} s",
            flush=True,
        )
    # The hourly ledger checkpoint: written now, so that the servers' job finds a recent one
    # and falls in no measured run (it is measured on its own, in the latency step).
    took = checkpoint(url, SECRET)
    print(f"  checkpoint of {subjects:,} subjects in {took:.1f} s", flush=True)
    if backend != "sqlite":
        # Write the freshly loaded pages out now, not during the next measurement.
        run(["psql", _pg(db), "-q", "-c", "VACUUM ANALYZE", "-c", "CHECKPOINT"])
    time.sleep(2)
    return url, api_key(url, "app", name)


def api_key(url: str, role: str, name: str) -> str:
    command = [sys.executable, "-m", "app.cli", "keys", "create", "--role", role]
    env = {"DATABASE_URL": url, "CONSENT_LEDGER_SECRET_KEY": SECRET}
    created = run([*command, "--name", f"bench-{name}-{role}-{os.urandom(3).hex()}"], env)
    return created.strip().splitlines()[-1]


def server_env(url: str) -> dict[str, str]:
    return {
        "DATABASE_URL": url,
        "CONSENT_LEDGER_SECRET_KEY": SECRET,
        "CONSENT_LEDGER_LOG_LEVEL": "warning",
    }


CHECK = "/v1/checks?subject_id=%s&target=gender&purpose=service_improvement"
PK = "/pk?subject_id=%s"  # the reference app's lookup


def batch_pairs() -> list[tuple[str, str]]:
    """The batch check's 20 pairs: the catalogue's first."""
    return list(load_catalogue().pairs)[:20]


def throughput(backend: str, url: str, key: str, plan: Plan, results: Results) -> None:
    """wrk on the reference app's ``/bare`` and ``/pk`` and the service's single and batch
    checks, both servers up at once, in TURNS turns of runs half the usual length (the order
    reversed every other turn), so that the machine's drift falls on all four alike; of each,
    the run with the median requests/s counts, and every run's is kept (one run of each, ten
    seconds apart, moved the batch's ratio by a tenth on a noisy machine: BENCHMARKS.md)."""
    seconds = max(2, round(plan.seconds / 2))
    measures = [
        ("bare", "reference", "/bare", None),
        ("pk", "reference", "/pk", lua_random(PK, plan.subjects)),
        ("check", "service", "/", lua_random(CHECK, plan.subjects)),
        ("batch20", "service", "/", lua_batch(plan.subjects, batch_pairs())),
    ]
    for workers in (1, 2):
        env = server_env(url)
        runs: dict[str, list[dict[str, float]]] = {kind: [] for kind, *_ in measures}
        with (
            serving("bench.reference:app", env, workers, "/bare") as ref,
            serving("app.main:create_app", env, workers, "/healthz") as app,
        ):
            servers = {"reference": ref, "service": app}
            for n in range(TURNS):
                for kind, name, path, script in measures[:: -1 if n % 2 else 1]:
                    credential = key if name == "service" else None
                    done = wrk(servers[name], path, credential, seconds, plan.connections, script)
                    runs[kind].append(done)
        median = {
            kind: median_run(kind_runs, lambda run: run["rps"]) for kind, kind_runs in runs.items()
        }
        label = f"throughput, {workers} worker(s)"
        results.rows[label] = {
            **median,
            "check/bare": round(median["check"]["rps"] / median["bare"]["rps"], 3),
            "pk/bare": round(median["pk"]["rps"] / median["bare"]["rps"], 3),
            "batch20 cost/check": round(median["check"]["rps"] / median["batch20"]["rps"], 2),
            "rps of each run": {kind: [run["rps"] for run in r] for kind, r in runs.items()},
        }
        print(f"  {label}: {json.dumps(results.rows[label])}", flush=True)


def latency_and_writes(backend: str, url: str, key: str, plan: Plan, results: Results) -> float:
    env = server_env(url)
    with (
        serving("app.main:create_app", env, 1, "/healthz") as app,
        serving("bench.reference:app", env, 1, "/bare") as ref,
    ):
        most = wrk(app, "/", key, plan.seconds, plan.connections, lua_random(CHECK, plan.subjects))
        rate = round(most["rps"] / 2)
        # Read-only and with 10% writes in turns, TURNS runs of each, so that the machine's drift
        # falls on both alike; of each kind the run with the median p99 counts (one run's p99
        # moved by more than the target's factor from run to run: BENCHMARKS.md). The writes
        # withdraw consents of subjects used once, in the writers' first sixth (the checkpoint
        # run's begin after it). In the same turns, the reference app at the same rate (warmed
        # up first, as the service is by its maximum's run): its primary-key read, and every
        # 10th request one row inserted and committed — the tail that the least durable write
        # leaves on the least read, on this machine, to hold the service's ratio against.
        wrk(ref, "/pk", None, 2, plan.connections, lua_random(PK, plan.subjects))
        span = plan.seconds * 2  # each open-loop run's
        per_mixed = math.ceil(rate * span / 10)
        if TURNS * per_mixed > plan.writers // 6:
            raise SystemExit(f"too few writers for {TURNS} mixed runs at {rate}/s: {plan.writers}")
        kinds = ("read_only", "10% writes")
        latencies: dict[str, dict[str, list[dict[str, Any]]]] = {
            "service": {kind: [] for kind in kinds},
            "reference": {kind: [] for kind in kinds},
        }
        for n in range(TURNS):
            for name, server, reference in (("service", app, False), ("reference", ref, True)):
                made = latencies[name]
                made["read_only"].append(
                    openloop(server, key, rate, span, plan.subjects, reference=reference)
                )
                made["10% writes"].append(
                    openloop(
                        server,
                        key,
                        rate,
                        span,
                        plan.subjects,
                        write_every=10,
                        write_offset=plan.subjects + n * per_mixed,
                        reference=reference,
                    )
                )

        def medians(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
            """Of each kind, the run with the median check p99, and every run's p99."""
            return {
                **{
                    kind: median_run(runs[kind], lambda run: float(run["read"]["p99"]))
                    for kind in kinds
                },
                "p99 of each run": {
                    kind: [run["read"]["p99"] for run in kind_runs]
                    for kind, kind_runs in runs.items()
                },
            }

        results.rows["latency at half the maximum"] = {
            "max_rps": most["rps"],
            "rate": rate,
            **medians(latencies["service"]),
            "reference": medians(latencies["reference"]),
        }
        print(f"  latency: {json.dumps(results.rows['latency at half the maximum'])}", flush=True)
        # Writes: each request withdraws a consent given in the seed, of a subject used once,
        # without and with an Idempotency-Key in turns, so that the machine's drift in speed
        # falls on both alike; the median of the runs counts.
        runs, seconds = 3, max(2, round(plan.seconds / 2))
        share = plan.writers // 3  # the mixed and the checkpoint runs'; the rest: these
        per_run = (plan.writers - share) // (2 * runs)
        first = plan.subjects + share
        measured: dict[bool, list[float]] = {False: [], True: []}
        for n in range(runs):
            for keyed in (False, True):
                start = first + (2 * n + keyed) * per_run
                done = wrk(app, "/", key, seconds, 16, lua_writes(start, per_run // 2, keyed))
                if done["non_2xx"] or done["socket_errors"]:
                    raise SystemExit(f"failed writes: {done}")
                measured[keyed].append(done["rps"])
        plain, keyed_ = statistics.median(measured[False]), statistics.median(measured[True])
        results.rows["consent changes"] = {
            "plain": {"rps": plain, "runs": measured[False]},
            "idempotency_key": {"rps": keyed_, "runs": measured[True]},
            "keyed/plain": round(keyed_ / plain, 3),
        }
        print(f"  writes: {json.dumps(results.rows['consent changes'])}", flush=True)
        results.rows["during a checkpoint"] = during_a_checkpoint(app, url, key, rate, plan)
        print(f"  checkpoint: {json.dumps(results.rows['during a checkpoint'])}", flush=True)
    return rate


def during_a_checkpoint(app: str, url: str, key: str, rate: float, plan: Plan) -> dict[str, object]:
    """Checks at the same rate with 1% withdrawals (few enough to leave the load as it was
    read-only), and a checkpoint of the whole ledger written from a quarter of the way in, as
    the hourly job would: what it costs the checks, and whether a withdrawal waits for it. Its
    writers are subjects the runs before left alone (from a sixth of the way into the writers)."""
    officer = {"Authorization": f"Bearer {api_key(url, 'officer', 'checkpoint')}"}
    written: dict[str, object] = {}

    def write() -> None:
        time.sleep(plan.seconds / 2)
        started = time.monotonic()
        response = httpx.post(app + "/v1/audit/checkpoints", headers=officer, timeout=600)
        written.update(seconds=round(time.monotonic() - started, 2), status=response.status_code)

    writer = threading.Thread(target=write)
    writer.start()
    offset = plan.subjects + plan.writers // 6
    load = openloop(app, key, rate, plan.seconds * 2, plan.subjects, 100, offset, timeline=True)
    writer.join()
    if written["status"] != 201:
        raise SystemExit(f"the checkpoint failed: {written}")
    return {"checkpoint_seconds": written["seconds"], "rate": rate, "1% writes": load}


def stale_allows(url: str, key: str, rounds: int, results: Results) -> None:
    """Give, check, withdraw, check, over fresh connections to a 2-worker server."""
    with serving("app.main:create_app", server_env(url), 2, "/healthz") as app:
        client = httpx.Client(
            base_url=app,
            headers={"Authorization": f"Bearer {key}"},
            limits=httpx.Limits(max_keepalive_connections=0),
            timeout=30,
        )
        sid = "stale-race"
        path = f"/v1/subjects/{sid}/consents/gender/service_improvement"
        stale = missed = 0
        for _ in range(rounds):
            client.put(path, json={"state": "given"}).raise_for_status()
            missed += not client.get(CHECK % sid).json()["decisions"][0]["allowed"]
            client.put(path, json={"state": "withdrawn"}).raise_for_status()
            stale += client.get(CHECK % sid).json()["decisions"][0]["allowed"]
        client.close()
    results.rows["withdraw-then-check race, 2 workers"] = {
        "rounds": rounds,
        "stale_allows": stale,
        "missed_grants": missed,
    }
    print(f"  race: {results.rows['withdraw-then-check race, 2 workers']}", flush=True)


@contextmanager
def mapped(paths: list[Path]) -> Iterator[None]:
    """Each file read into the OS page cache and held there until the block ends: mapped into
    this process, read-only, ``MAP_POPULATE`` reading it in (empty files are skipped).

    Held, not only read: the virtual machines these figures were measured on page out memory
    that looks unused (DAMON's proactive reclaim: a region seen accessed at most once in each
    5-s aggregation for a minute), the page cache included, and a file read through once stays
    in that band, so its pages were paged out again from ~20-30 s after the read (6.0 GiB of
    the 1M-subject file in the cache, 5.2 GiB a minute later: BENCHMARKS.md, "The scale step's
    disk reads"). Their reclaim scheme pages out only pages that no process maps (its filters:
    not anonymous, unmapped), so a mapping holds them; a scheme without that filter, or memory
    pressure, could still take them."""
    with ExitStack() as stack:
        for path in paths:
            with open(path, "rb") as file:  # the mapping keeps a descriptor of its own
                if os.fstat(file.fileno()).st_size:
                    flags = mmap.MAP_SHARED | mmap.MAP_POPULATE
                    stack.enter_context(mmap.mmap(file.fileno(), 0, flags, mmap.PROT_READ))
        yield


def database_files(backend: str, url: str) -> list[Path] | None:
    """The files that hold the database's tables and indexes: SQLite's file (and its write-ahead
    log, where one exists then: a server that closed cleanly leaves none); PostgreSQL's
    relations' files, every 1-GB segment, under its data directory (named by a superuser, as
    `postgres` is, and read as root). None where they cannot be named or read (a PostgreSQL on
    another host, or a data directory this user may not read)."""
    if backend == "sqlite":
        path = Path(sqlite_path(url))
        wal = Path(f"{path}-wal")
        if not os.access(path, os.R_OK):
            return None
        return [path, *([wal] if os.access(wal, os.R_OK) else [])]
    query = (
        "SELECT current_setting('data_directory') || '/' || pg_relation_filepath(c.oid) "
        "FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'i')"
    )
    done = subprocess.run(
        ["psql", libpq_url(url), "-qtA", "-v", "ON_ERROR_STOP=1", "-c", query],
        capture_output=True,
        text=True,
    )
    files = []
    for first in done.stdout.splitlines() if done.returncode == 0 else []:
        segment = 0
        while first and os.access(
            path := Path(f"{first}.{segment}" if segment else first), os.R_OK
        ):
            files.append(path)
            segment += 1
    return files or None


@contextmanager
def held_in_memory(backend: str, url: str) -> Iterator[str]:
    """The database in the OS page cache for the whole block (``mapped``): the scale step so
    measures the best case, a database the machine keeps in memory, for both sizes alike.
    Yields "held"; where its files could not be held, PostgreSQL's tables and indexes are read
    in with ``pg_prewarm`` (a contrib extension, made by a superuser), which the reclaim may
    take back during the run (as in the scale step before 2026-11-28: each database read in
    before each run, not held), and it yields "read in", or "neither" where that failed too
    (and for a SQLite file this user cannot read)."""
    files = database_files(backend, url)
    if files is not None:
        with mapped(files):
            yield "held"
        return
    if backend == "sqlite":  # a file this user cannot read: nothing else to read it in with
        print("  the database's file not held in memory (not readable)", flush=True)
        yield "neither"
        return
    warm = (
        "CREATE EXTENSION IF NOT EXISTS pg_prewarm",
        "SELECT sum(pg_prewarm(c.oid::regclass, 'read')) FROM pg_class c "
        "WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'i')",
    )
    command = ["psql", libpq_url(url), "-qtA"]
    done = subprocess.run(
        [*command, "-v", "ON_ERROR_STOP=1", *(arg for sql in warm for arg in ("-c", sql))],
        capture_output=True,
        text=True,
    )
    note = f"pg_prewarm: {done.stderr.strip()}" if done.returncode else "read in by pg_prewarm"
    print(f"  the database's files not held in memory ({note})", flush=True)
    yield "neither" if done.returncode else "read in"


def disk_reads() -> int | None:
    """Bytes read from disk so far on this machine (/proc/vmstat's pgpgin, in KiB), counting
    every process, PostgreSQL's too; None where the kernel does not say."""
    try:
        vmstat = Path("/proc/vmstat").read_text()
    except OSError:
        return None
    found = (line.split() for line in vmstat.splitlines())
    return next((int(value) * 1024 for name, value in found if name == "pgpgin"), None)


def scale(backend: str, workdir: Path, rate: float, plan: Plan, results: Results) -> None:
    """Check latency at one rate on a database of ``plan.subjects`` and one of
    ``plan.big_subjects``: TURNS open-loop runs of each in turns (the order reversed every other
    turn), each on a server of its own, started for it and warmed up; of each, the run with the
    median p99 counts, and every run's p99 is kept (one run of each gave a p99 ratio of 1.31
    with a p50 ratio of 1.03 on a noisy machine: BENCHMARKS.md). One server at a time: with both
    up, the idle one's background jobs ran beside the measured one's. Each run's database is
    held in memory from before its server starts until the run ends (``held_in_memory``), and
    what the run read from disk is kept beside its latencies."""
    url_small, key_small = prepared(
        backend, workdir, "tiny", plan.subjects, plan.events_per_subject
    )
    url_big, key_big = prepared(backend, workdir, "big", plan.big_subjects, plan.events_per_subject)
    sizes = {
        "small": (url_small, key_small, plan.subjects),
        "big": (url_big, key_big, plan.big_subjects),
    }
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in sizes}
    states = []  # each run's database: "held" in memory, "read in" first, or "neither"
    for n in range(TURNS):
        for label in list(sizes)[:: -1 if n % 2 else 1]:
            url, key, subjects = sizes[label]
            with (
                held_in_memory(backend, url) as state,
                serving("app.main:create_app", server_env(url), 1, "/healthz") as app,
            ):
                states.append(state)
                # Warmed up first (connections opened, caches of the database and the process
                # filled), as the latency step's server is by the throughput runs before it.
                wrk(app, "/", key, 3, plan.connections, lua_random(CHECK, subjects))
                before = disk_reads()
                made = openloop(app, key, rate, plan.seconds * 2, subjects)
                after = disk_reads()
            read: dict[str, Any] = made["read"]  # type: ignore[assignment]
            read["worker_busy"] = made.get("worker_busy")
            if before is not None and after is not None:
                read["disk_mb"] = round((after - before) / 1e6, 1)
            runs[label].append(read)
    small, big = (median_run(runs[label], lambda run: float(run["p99"])) for label in sizes)
    results.rows["scale"] = {
        "subjects": [plan.subjects, plan.big_subjects],
        "rate": rate,
        "small": small,
        "big": big,
        "p50 big/small": round(big["p50"] / small["p50"], 2),
        "p99 big/small": round(big["p99"] / small["p99"], 2),
        "p99 of each run": {label: [run["p99"] for run in r] for label, r in runs.items()},
        "disk MB of each run": {
            label: [run.get("disk_mb") for run in r] for label, r in runs.items()
        },
        "worker busy in each run": {
            label: [run.get("worker_busy") for run in r] for label, r in runs.items()
        },
        "held in memory": all(state == "held" for state in states),
        "read into memory first": "neither" not in states,
    }
    print(f"  scale: {json.dumps(results.rows['scale'])}", flush=True)


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory = int(Path("/proc/meminfo").read_text().split()[1]) // 1024 // 1024
    pg = (
        run(["psql", PG_ADMIN, "-tA", "-c", "show server_version", "-c", "show autovacuum"])
        .strip()
        .splitlines()
        if shutil.which("psql")
        else ["?", "?"]
    )
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split()[1]
    # How fast this machine runs Python today: machines of one kind differ by 2-3x.
    speed = min(timeit.repeat("sum(range(10_000))", number=200, repeat=5)) / 200 * 1e6
    return (
        f"{os.cpu_count()} cores ({cpu}), {memory} GiB, Python {platform.python_version()} "
        f"(sum(range(10,000)) in {speed:.0f} µs), PostgreSQL {pg[0]} (autovacuum {pg[-1]}) "
        f"on the same host, wrk {wrk_version}"
    )


def _each_turn(t: dict[str, Any], numerator: str, denominator: str, digits: int) -> str:
    """Each turn's ratio of two throughputs, where the runs were made in turns (since
    2026-11-27's eleventh session)."""
    each = t.get("rps of each run")
    if not isinstance(each, dict):
        return ""
    ratios = zip(each[numerator], each[denominator], strict=True)
    return f"; each turn's {' / '.join(f'{a / b:.{digits}f}' for a, b in ratios)}"


def _busy(run: dict[str, Any]) -> str:
    """The share of a core a counted open-loop run took of its worker (since 2026-11-27's
    thirteenth session)."""
    busy = run.get("worker_busy")
    return "" if busy is None else f" (the worker's share of a core: {busy})"


def _each_p99(s: dict[str, Any]) -> str:
    """The scale step's p99 of each run, where its runs were made in turns (since 2026-11-27's
    eleventh session), what each read from disk (since the twelfth) and the share of a core it
    took of its worker (since the thirteenth); a figure is left out where a run lacks it."""
    shown = []
    for key, what in (
        ("p99 of each run", "each run's p99 ms"),
        ("disk MB of each run", "MB read from disk"),
        ("worker busy in each run", "the worker's share of a core"),
    ):
        each = s.get(key)
        if isinstance(each, dict) and None not in each["small"] + each["big"]:
            small, big = (" / ".join(map(str, each[label])) for label in ("small", "big"))
            shown.append(f"{what}: small {small}, big {big}")
    if not shown or not shown[0].startswith("each run's p99"):
        return ""
    if s.get("read into memory first") is False:
        shown.append("the databases NOT read into memory first")
    elif s.get("held in memory") is False:  # since 2026-11-28; before, read in before each run
        shown.append("the databases NOT held in memory, only read in first")
    return f" ({'; '.join(shown)})"


def render(machine_line: str, command: str, results: list[dict[str, object]]) -> str:
    """The results as the markdown table BENCHMARKS.md shows."""
    lines = [
        f"Machine: {machine_line}.  ",
        f"Command: `{command}`",
        "",
        "| backend | measure | result | target |",
        "|---|---|---|---|",
    ]

    def row(backend: str, what: str, result: str, target: str = "") -> None:
        lines.append(f"| {backend} | {what} | {result} | {target} |")

    def each_p99(each: dict[str, list[float]]) -> str:
        runs = {kind: " / ".join(map(str, each[kind])) for kind in ("read_only", "10% writes")}
        return f"read-only {runs['read_only']}, with writes {runs['10% writes']}"

    for res in results:
        b = str(res["backend"])
        for workers in (1, 2):
            t = res.get(f"throughput, {workers} worker(s)")
            if not isinstance(t, dict):
                continue
            row(
                b,
                f"{workers} worker(s): bare / raw-driver pk / check / batch of 20, requests/s",
                f"{t['bare']['rps']:,.0f} / {t['pk']['rps']:,.0f} / {t['check']['rps']:,.0f} / "
                f"{t['batch20']['rps']:,.0f}",
            )
            goal = "≥ 0.45" if b == "postgresql" else "≥ 0.5"
            row(
                b,
                f"{workers} worker(s): check ÷ bare (pk ÷ bare)",
                f"{t['check/bare']} ({t['pk/bare']}){_each_turn(t, 'check', 'bare', 3)}",
                goal if workers == 1 else "",
            )
            row(
                b,
                f"{workers} worker(s): batch-of-20 cost ÷ single check",
                f"{t['batch20 cost/check']}{_each_turn(t, 'check', 'batch20', 2)}",
                "≤ 1.5",
            )
        lat = res.get("latency at half the maximum")
        if isinstance(lat, dict):
            r = lat["read_only"]["read"]
            row(
                b,
                f"check latency at {lat['rate']}/s (half of {lat['max_rps']:,.0f}), "
                "p50 / p99 / p99.9 ms",
                f"{r['p50']} / {r['p99']} / {r['p999']}{_busy(lat['read_only'])}",
                "≤ 2 / 10 / 25",
            )
            m = lat["10% writes"]["read"]
            each = lat.get("p99 of each run")
            row(
                b,
                "same with 10% writes: check p99 ÷ read-only p99"
                + (" (the median runs of three in turns; each run's p99 ms)" if each else ""),
                f"{round(m['p99'] / r['p99'], 2)} ({m['p99']} ms"
                + (f"; {each_p99(each)})" if each else ")")
                + _busy(lat["10% writes"]),
                "≤ 2",
            )
            ref = lat.get("reference")
            if isinstance(ref, dict):
                rr, rm = ref["read_only"]["read"], ref["10% writes"]["read"]
                row(
                    b,
                    "the reference app in the same turns (raw-driver pk read; every 10th request "
                    "one row inserted and committed): p99 ÷ read-only p99 (each run's p99 ms)",
                    f"{round(rm['p99'] / rr['p99'], 2)} ({rm['p99']} ms; "
                    f"{each_p99(ref['p99 of each run'])})",
                )
            c = res.get("during a checkpoint")
            if isinstance(c, dict):
                cr, cw = c["1% writes"]["read"], c["1% writes"]["write"]
                row(
                    b,
                    f"same with 1% writes while a checkpoint is written "
                    f"({c['checkpoint_seconds']} s): check p99 ÷ read-only p99; longest withdrawal",
                    f"{round(cr['p99'] / r['p99'], 2)} ({cr['p99']} ms); {cw['max']} ms",
                )
        w = res.get("consent changes")
        if isinstance(w, dict):
            row(
                b,
                "consent changes/s (withdrawal: event, chain, outbox), 1 worker",
                f"{w['plain']['rps']:,.0f}",
                "≥ 1,000 (PostgreSQL)",
            )
            row(b, "with an Idempotency-Key ÷ without", f"{w['keyed/plain']}", "≥ 0.8")
        s = res.get("scale")
        if isinstance(s, dict):
            small, big = s["subjects"]
            row(
                b,
                f"check latency {big:,} ÷ {small:,} subjects at {s['rate']}/s, p50 / p99",
                f"{s['p50 big/small']} / {s['p99 big/small']}{_each_p99(s)}",
                "≤ 1.2",
            )
        race = res.get("withdraw-then-check race, 2 workers")
        if isinstance(race, dict):
            row(
                b,
                f"stale allows in {race['rounds']:,} withdraw-then-check rounds, 2 workers",
                str(race["stale_allows"]),
                "0",
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small data, short runs")
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=("throughput", "latency", "race", "scale")
    )
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--big-subjects", type=int, help="the scale run's large database")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="PostgreSQL: keep scratch databases that already hold the data (seeding 10M events "
        "takes ~10 min); a run's writes change the main one, so reuse it for scale runs only",
    )
    parser.add_argument(
        "--rate", type=float, help="the open-loop rate when the latency step is skipped"
    )
    args = parser.parse_args()
    global REUSE
    REUSE = args.reuse
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk (Debian), brew install wrk (macOS)")
    plan = QUICK if args.quick else FULL
    if args.big_subjects:
        plan.big_subjects = args.big_subjects
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    print(machine(), flush=True)
    all_results = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            print(f"{backend}:", flush=True)
            results = Results(backend)
            url, key = prepared(backend, Path(tmp), "main", plan.seeded, plan.events_per_subject)
            rate = args.rate or 0.0
            if "throughput" not in args.skip:
                throughput(backend, url, key, plan, results)
            if "latency" not in args.skip:
                rate = latency_and_writes(backend, url, key, plan, results)
            if "race" not in args.skip:
                stale_allows(url, key, plan.stale_rounds, results)
            if "scale" not in args.skip and rate:
                scale(backend, Path(tmp), rate, plan, results)
            all_results.append({"backend": backend, **results.rows})
    command = "python -m bench " + " ".join(sys.argv[1:])
    print()
    print(render(machine(), command.strip(), all_results))
    if args.json:
        args.json.write_text(
            json.dumps({"machine": machine(), "command": command, "results": all_results}, indent=1)
        )


if __name__ == "__main__":
    main()
