"""The ``genrec`` command: one entry point, one subcommand per job.

Each subcommand lives in its own module under :mod:`infra.commands` and exposes
``register(subparsers)``; adding a job is adding a module name to
``COMMAND_MODULES``. Imports of heavy libraries (torch, ray) happen inside the
command handlers so ``genrec --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

COMMAND_MODULES = [
    "infra.commands.broker",
    "infra.commands.topics",
    "infra.commands.replay",
    "infra.commands.archive",
    "infra.commands.bench",
    "infra.commands.demo",
    "infra.commands.eval",
    "infra.commands.sequences",
    "infra.commands.rewards",
    "infra.commands.experiments",
    "infra.commands.train",
    "infra.commands.align",
    "infra.commands.models",
    "infra.commands.audit",
    "infra.commands.serve",
    "infra.commands.simulate",
    "infra.commands.tokenize",
]

EPILOG = """\
environment:
  KAFKA_BOOTSTRAP          host:port of a Kafka cluster (default: an embedded tansu broker where a
                           command needs one and none is given)
  GENREC_TOPIC_NAMESPACE   prefix of every physical topic name (isolates deployments)
  GENREC_CONFIG            path of genrec.yaml (defaults: ./genrec.yaml, then built-in defaults)
  RAY_AUTH_TOKEN_PATH      file holding the Ray cluster's auth token (Ray runs with RAY_AUTH_MODE=token;
                           joining a cluster without a token is refused; SECURITY.md says how a node gets it)

The README has the quickstart and a code map; docs/architecture.md the architecture and contracts."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="genrec",
        description="genrec: a streaming, real-time generative recommender "
                    "(Kafka ingest, Ray actors, semantic IDs, session generation, Ray Serve, A/B).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # a command module not written yet
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.verbose < 2:
        logging.getLogger("kafka").setLevel(logging.ERROR)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, ConnectionError, FileNotFoundError) as e:
        print(f"genrec {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
