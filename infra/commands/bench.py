"""``genrec bench SUITE``: run a benchmark suite from tests/bench."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def register(sub) -> None:
    from infra.benchmarks import available_suites

    suites = available_suites()
    p = sub.add_parser("bench", help="run a benchmark suite (table, or --json)",
                       description="Run a benchmark suite. Speed is measured as ratios against a baseline "
                                   "in the same run. Suites: " + ", ".join(suites + ["all"]))
    p.add_argument("suite", help="suite name, or 'all'")
    p.add_argument("--quick", action="store_true", help="a smaller run (~1 min) with the same metric names")
    p.add_argument("--json", action="store_true", help="print one JSON object: suite, machine, config, metrics")
    p.add_argument("--dataset", default=None, help="data set for suites that take one (ml100k, toys, synthetic, PATH)")
    p.add_argument("--write", metavar="FILE", default=None,
                   help="also write the result into this markdown file (e.g. BENCHMARKS.md)")
    p.set_defaults(func=run)


def run(args) -> int:
    from infra.benchmarks import available_suites, format_table, run_suite, write_section

    names = available_suites() if args.suite == "all" else [args.suite]
    for name in names:
        result = run_suite(name, quick=args.quick, dataset=args.dataset)
        if args.json:
            print(json.dumps({k: result[k] for k in ("suite", "machine", "config", "metrics")}))
        else:
            print(format_table(result))
            print()
        if args.write:
            cmd = "genrec bench " + name + (" --quick" if args.quick else "") + \
                  (f" --dataset {args.dataset}" if args.dataset else "")
            write_section(Path(args.write), result, cmd)
            print(f"wrote {name} to {args.write}", file=sys.stderr)
    return 0
