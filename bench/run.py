"""``make bench``: run every benchmark section, print one table, write ``bench/results.json``.

    .venv/bin/python -m bench.run                 # the full suite (after ``make up``)
    .venv/bin/python -m bench.run --smoke         # small sizes: checks that it works (CI)
    .venv/bin/python -m bench.run --only relay consumers

Sections (each ``bench/<name>.py`` with ``run(ctx)``) are listed in ``SECTIONS``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from pathlib import Path

from bench.common import RESULTS, Context, Result, print_table, write_results

SECTIONS: tuple[str, ...] = (
    "http_intake",
    "dispatch_writes",
    "relay",
    "consumers",
    "end_to_end",
    "scaling",
    "memory",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="small sizes, one run each")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", nargs="*", default=None, help="sections to run")
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help=f"where to write (default {RESULTS})"
    )
    parser.add_argument("--intake", default="http://127.0.0.1:8001")
    parser.add_argument("--dispatch", default="http://127.0.0.1:8002")
    parser.add_argument("--scoring", default="http://127.0.0.1:8003")
    parser.add_argument("--feed", default="http://127.0.0.1:8004")
    parser.add_argument("--notify", default="http://127.0.0.1:8005")
    args = parser.parse_args(argv)
    ctx = Context(
        smoke=args.smoke,
        repeats=1 if args.smoke else args.repeats,
        urls={s: getattr(args, s) for s in ("intake", "dispatch", "scoring", "feed", "notify")},
    )
    results: list[Result] = []
    failed: list[str] = []
    for name in args.only or SECTIONS:
        try:
            module = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"bench.{name}":
                print(f"== {name}: not written yet", file=sys.stderr)
                failed.append(name)
                continue
            raise
        print(f"== {name}", file=sys.stderr, flush=True)
        started = time.monotonic()
        try:
            results += module.run(ctx)
        except Exception:  # noqa: BLE001 - one section failing must not hide the others
            traceback.print_exc()
            failed.append(name)
        print(f"== {name}: {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    print_table(results)
    write_results(results, ctx, args.results)
    if failed:
        print(f"sections that failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
