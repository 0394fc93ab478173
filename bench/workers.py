"""STOW-RS ingest with 1, 2 and 4 server processes (``serve --workers N``, scale-out issue).

    python bench/workers.py                         # tiny + CT sets, workers 1 2 4, SQLite index
    python bench/workers.py --workers 1 2 --quick
    python bench/workers.py --database-url postgresql+asyncpg://user@127.0.0.1:5432/bench

For each worker count a fresh server (fresh data folder and index) is started, and the same data
is sent with the same client: the tiny set (8x8 pixels, 100 instances per request) and the CT set
(0.5 MB slices, 50 per request), each from ``--clients`` concurrent uploaders on new connections
spread over the workers by the shared listening socket. Every reply is checked: a failed or
partial STOW is a problem (exit code 1). It prints instances/s and MB/s per worker count, and the
speed-up over one worker.

With ``--database-url`` the index is that database instead of a SQLite file in the data folder;
each run empties it first (DROP SCHEMA public CASCADE; the database must be a throw-away one).

Client and servers share the machine's CPUs: on a 2-core machine the client's own work (building
multipart bodies, parsing replies) competes with the workers, so the curve flattens at the core
count; the per-process CPU seconds printed say where the time went.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import datasets
import httpclient
import psutil
import servers
from run import file_batches, require_free_port

MB = 1e6


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--quick", action="store_true", help="2,000 tiny instances and 200 CT slices")
    p.add_argument("--tiny", type=int, default=20000, help="tiny instances per run")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--port", type=int, default=18090)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/imaging-archive-bench"))
    p.add_argument("--database-url", default="", help="index database (default: SQLite in the run folder)")
    p.add_argument("--json", type=Path, help="also write the figures as JSON")
    return p.parse_args(argv)


def _reset_database(url: str) -> None:
    """Empty a throw-away PostgreSQL database so each run starts from no schema."""
    import sqlalchemy

    sync_url = url.replace("+asyncpg", "+psycopg2") if "+asyncpg" in url else url
    try:
        engine = sqlalchemy.create_engine(sync_url)
    except ImportError:  # no psycopg2: run the DDL through asyncpg
        asyncio.run(_reset_async(url))
        return
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    engine.dispose()


async def _reset_async(url: str) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.exec_driver_sql("DROP SCHEMA public CASCADE")
        await conn.exec_driver_sql("CREATE SCHEMA public")
    await engine.dispose()


def _cpu(root: psutil.Process) -> float:
    total = 0.0
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            continue
    return total


def one_run(args: argparse.Namespace, workers: int, tiny: datasets.TinySet, ct: datasets.CtSet
            ) -> dict[str, object]:
    run_dir = args.workdir / f"workers-{workers}"
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    if args.database_url:
        _reset_database(args.database_url)
    require_free_port(args.port)
    arch = servers.Archive(run_dir, args.port, workers=workers, database_url=args.database_url or None)
    arch.start()
    figures: dict[str, object] = {"workers": workers}
    problems: list[str] = []
    try:
        root = psutil.Process(arch.proc.pid)
        for label, batches, in (("tiny", tiny.batches(100)), ("ct", file_batches(ct.files, 50))):
            before = _cpu(root)
            result = asyncio.run(httpclient.stow(f"{arch.base}/studies", batches, args.clients))
            figures[label] = {"instances": result.instances, "seconds": round(result.seconds, 3),
                              "instances_per_s": round(result.instances_per_s, 1),
                              "mb_per_s": round(result.mb_per_s, 1),
                              "server_cpu_s": round(_cpu(root) - before, 1)}
            problems += [f"workers={workers} {label}: batch {f.batch} answered {f.status}: {f.detail[:200]}"
                         for f in result.failures]
    finally:
        arch.stop()
    figures["problems"] = problems
    return figures


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cache = args.workdir / "cache"
    count = 2000 if args.quick else args.tiny
    tiny = datasets.tiny_set(cache, count, seed=31, pid_prefix="WRK")
    ct = datasets.ct_set(cache, 1 if args.quick else 4, 2, 100, 0, tag="wrk")
    print(f"tiny set: {tiny.count:,} instances, {tiny.total_bytes / MB:.0f} MB; CT set: {len(ct.files)} "
          f"slices, {ct.total_bytes / MB:.0f} MB; {args.clients} clients; index: "
          f"{args.database_url or 'SQLite'}; {psutil.cpu_count()} CPUs", flush=True)
    runs = []
    for n in args.workers:
        print(f"--- {n} worker(s)", flush=True)
        runs.append(fig := one_run(args, n, tiny, ct))
        for label in ("tiny", "ct"):
            f = fig[label]
            assert isinstance(f, dict)
            print(f"  {label:4s}: {f['instances_per_s']:8.1f} inst/s {f['mb_per_s']:7.1f} MB/s "
                  f"({f['instances']} in {f['seconds']} s, server CPU {f['server_cpu_s']} s)", flush=True)
    base = runs[0]
    print("\nworkers  tiny inst/s  speed-up   CT MB/s  speed-up")
    for fig in runs:
        t, c = fig["tiny"], fig["ct"]
        bt, bc = base["tiny"], base["ct"]
        assert isinstance(t, dict) and isinstance(c, dict) and isinstance(bt, dict) and isinstance(bc, dict)
        tiny_up, ct_up = t["instances_per_s"] / bt["instances_per_s"], c["mb_per_s"] / bc["mb_per_s"]
        print(f"{fig['workers']:7d}  {t['instances_per_s']:11.1f}  {tiny_up:7.2f}x  "
              f"{c['mb_per_s']:8.1f}  {ct_up:7.2f}x")
    problems = [p for fig in runs for p in fig["problems"]]  # type: ignore[union-attr]
    for p in problems:
        print("PROBLEM:", p)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"when": time.strftime("%Y-%m-%d %H:%M"), "runs": runs}, indent=2))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
