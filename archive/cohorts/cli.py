"""``imaging-archive cohort query|save|list``: the cohort filters of ``POST /api/cohorts/query``
from the command line. Each command opens the configured database itself, so it runs beside a
serving archive (SQLite in WAL mode) or without one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from archive import config
from archive.auth import ALL
from archive.cohorts import manifest, store
from archive.cohorts.filters import CohortFilters, FilterError, parse_filters
from archive.cohorts.query import CohortResult, Counts, cohort_counts, run_query, study_pks
from archive.index.db import SchemaError, using_engine

T = TypeVar("T")


class UsageError(Exception):
    """A problem with the command's arguments or files (exit 2)."""


def _add_filter_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--filters", metavar="JSON", help='filter object, e.g. \'{"modality": ["CT"]}\'')
    group.add_argument("--filters-file", metavar="FILE", help="file holding the filter object")
    parser.add_argument("--config", help="TOML configuration file (default: built-in defaults)")


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``cohort query``, ``cohort save`` and ``cohort list`` to ``imaging-archive``."""
    cohort = sub.add_parser("cohort", help="cohorts: query by DICOM and clinical filters, save, list")
    commands = cohort.add_subparsers(dest="cohort_command", required=True)
    q = commands.add_parser("query", help="counts (and facets) of the studies the filters select",
                            description="Filters: docs/cohorts.md. No filters: every study.")
    _add_filter_options(q)
    q.add_argument("--cohort", metavar="ID", help="use the filters of this saved cohort")
    q.add_argument("--facets", action="store_true", help="also print the facets")
    q.add_argument("--json", action="store_true", help="print counts and facets as JSON")
    q.add_argument("--manifest", metavar="OUT", help="write the manifest to OUT.json or OUT.csv")
    q.add_argument("--base-url", help="DICOMweb root for the manifest's URLs "
                                      "(default: [http] base_url, else http://HOST:PORT/dicom-web)")
    q.set_defaults(func=query_command)
    s = commands.add_parser("save", help="save the filters as a named cohort; prints its id")
    s.add_argument("name")
    _add_filter_options(s)
    s.set_defaults(func=save_command)
    ls = commands.add_parser("list", help="the saved cohorts")
    ls.add_argument("--config", help="TOML configuration file (default: built-in defaults)")
    ls.add_argument("--json", action="store_true", help="print them as JSON")
    ls.set_defaults(func=list_command)


async def _with_engine(cfg: config.Config, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    return await using_engine(cfg.database_url, work, cfg.database.echo)


def _filter_object(args: argparse.Namespace) -> Any:
    if args.filters_file:
        try:
            text = Path(args.filters_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read {args.filters_file}: {exc}") from None
    else:
        text = args.filters or "{}"
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise UsageError(f"the filters are not valid JSON: {exc}") from None


def _base_url(cfg: config.Config, given: str | None) -> str:
    if given:
        return given.rstrip("/")
    if cfg.http.base_url:
        return cfg.http.base_url.rstrip("/")
    return f"http://{cfg.http.host}:{cfg.http.port}/dicom-web"


def _run(args: argparse.Namespace, work: Callable[[config.Config], int]) -> int:
    """Exit 0 on success, 2 on a usage problem (configuration, arguments, filters)."""
    try:
        cfg = config.load(args.config)
        return work(cfg)
    except (config.ConfigError, UsageError, SchemaError) as exc:
        print(f"imaging-archive: {exc}", file=sys.stderr)
        return 2
    except FilterError as exc:
        print(f"imaging-archive: {'' if exc.field == 'name' else 'filter '}{exc}", file=sys.stderr)
        return 2


def print_counts(counts: Counts) -> None:
    print(f"patients: {counts.patients}\nstudies: {counts.studies}\nseries: {counts.series}\n"
          f"instances: {counts.instances}\nbytes: {counts.bytes}")


def print_facets(facets: dict[str, list[dict[str, Any]]]) -> None:
    for name, entries in facets.items():
        print(f"\n{name}:")
        for e in entries:
            label = "(none)" if e["value"] is None else e["value"]
            if e.get("name"):
                label += f"  {e['name']}"
            print(f"  {e['studies']:>8} studies {e['patients']:>8} patients  {label}")


async def write_manifest(engine: AsyncEngine, filters: CohortFilters, path: Path, base_url: str,
                         header: dict[str, Any]) -> None:
    fmt = path.suffix.lower().lstrip(".")
    pks = await study_pks(engine, filters, ALL)  # the operator's command: every release state
    rows = manifest.series_rows(engine, pks, base_url)
    with path.open("w", encoding="utf-8", newline="") as out:
        async for chunk in manifest.manifest_chunks(fmt, header, rows):
            out.write(chunk)


def query_command(args: argparse.Namespace) -> int:
    if args.manifest and Path(args.manifest).suffix.lower().lstrip(".") not in manifest.FORMATS:
        print("imaging-archive: --manifest must name a .json or .csv file", file=sys.stderr)
        return 2
    if args.cohort and (args.filters or args.filters_file):
        print("imaging-archive: give --cohort or filters, not both", file=sys.stderr)
        return 2

    def work(cfg: config.Config) -> int:
        raw = None if args.cohort else _filter_object(args)

        async def run(engine: AsyncEngine) -> CohortResult:
            header: dict[str, Any] = {"id": None, "name": None}
            if args.cohort:
                saved = await store.get(engine, args.cohort)
                if saved is None:
                    raise UsageError(f"no saved cohort {args.cohort!r}")
                filters = saved.parsed()
                header = saved.to_json()
            else:
                filters = parse_filters(raw)
            base = _base_url(cfg, args.base_url)
            result = await run_query(engine, filters, base, limit=0, facets=args.facets, visible=ALL)
            if args.manifest:
                header = {**header, "filters": filters.to_json(), "dicomweb": base}
                await write_manifest(engine, filters, Path(args.manifest), base, header)
            return result

        result = asyncio.run(_with_engine(cfg, run))
        if args.json:
            out = {"filters": result.filters, "counts": result.counts.to_json()}
            if result.facets is not None:
                out["facets"] = result.facets
            print(json.dumps(out, indent=2))
        else:
            print_counts(result.counts)
            if result.facets is not None:
                print_facets(result.facets)
        if args.manifest:
            print(f"manifest: {args.manifest}", file=sys.stderr)
        return 0

    return _run(args, work)


def save_command(args: argparse.Namespace) -> int:
    def work(cfg: config.Config) -> int:
        name = store.check_name(args.name)
        filters = parse_filters(_filter_object(args))

        async def run(engine: AsyncEngine) -> tuple[store.SavedCohort, Counts]:
            return await store.save(engine, name, filters), await cohort_counts(engine, filters, ALL)

        cohort, counts = asyncio.run(_with_engine(cfg, run))
        print(cohort.id)
        print(f"{cohort.name}: {counts.studies} studies of {counts.patients} patients", file=sys.stderr)
        return 0

    return _run(args, work)


def list_command(args: argparse.Namespace) -> int:
    def work(cfg: config.Config) -> int:
        found = asyncio.run(_with_engine(cfg, store.list_all))
        if args.json:
            print(json.dumps([c.to_json() for c in found], indent=2))
        for c in [] if args.json else found:
            print(f"{c.id}  {c.to_json()['created']}  {c.name}  {json.dumps(c.filters)}")
        return 0

    return _run(args, work)
