"""``genrec experiments report NAME``: the A/B report of one experiment from its reward records.

Reads the reward joiners' output (topic ``rewards``, one record per served
session), the exposure log (``served``: latency per arm, coverage) and the
items' arrival times (``item-events``: new-item share, catalog size) from Kafka
or from the Parquet archive (``genrec archive``), derives CUPED's pre-period
from the rewards served before the experiment's first exposure
(:mod:`serving.experiments.inputs`, the same code as the HTTP report), and
prints the report as a table or JSON. It never derives rewards itself: with no
reward records it says how to produce them (``genrec rewards``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from infra.commands.topics import add_kafka_args, kafka_from_args


def register(sub) -> None:
    p = sub.add_parser("experiments", help="A/B experiments: the report of one experiment from the rewards topic",
                       description="Offline views of the online A/B experiments (serving/experiments).")
    esub = p.add_subparsers(dest="experiments_command", metavar="SUBCOMMAND", required=True)
    r = esub.add_parser("report", help="per-arm metrics, lifts with intervals, corrected p-values, guardrails, SRM",
                        description="The A/B report of experiment NAME from the reward records (topic rewards, "
                                    "written by `genrec rewards`; those served before its first exposure are "
                                    "CUPED's pre-period), the served records (latency, coverage) and item-events "
                                    "(new-item share). "
                                    "Users are the unit of analysis (delta method); see "
                                    "serving/experiments/report.py. Source: Kafka (default, read from the "
                                    "beginning) or the Parquet archive written by `genrec archive`.")
    r.add_argument("name", metavar="NAME", help="experiment name (as in the experiments YAML)")
    _add_source_args(r)
    r.add_argument("--json", action="store_true", help="print the report as JSON (no NaN: missing values are null)")
    r.add_argument("--plot", default=None, metavar="FILE", help="also write the forest / cumulative-lift plot (PNG)")
    add_kafka_args(r)
    r.set_defaults(func=run_report)

    pr = esub.add_parser("promote", help="promote an arm's model when the sequential A/B test says it won",
                         description="Decide from the experiment's report whether arm ARM has won "
                                     "(serving/experiments/promotion.py: sequential analysis, every primary metric "
                                     "significant and better after correction, no guardrail breached or without "
                                     "data, no sample ratio mismatch, enough users) and, unless --dry-run, make "
                                     "its model version the registry's promoted version (replicas follow it). The "
                                     "registry still refuses a version whose gate did not pass.")
    pr.add_argument("name", metavar="NAME", help="experiment name (as in the experiments YAML)")
    pr.add_argument("--arm", required=True, help="the arm whose model may be promoted")
    pr.add_argument("--registry", default=None, metavar="URI", help="model registry (default: recommender.registry)")
    pr.add_argument("--min-users", type=int, default=200, help="users each arm needs before a decision (200)")
    pr.add_argument("--dry-run", action="store_true", help="print the decision, promote nothing")
    _add_source_args(pr)
    pr.add_argument("--json", action="store_true", help="print the decision as JSON")
    add_kafka_args(pr)
    pr.set_defaults(func=run_promote)


def _add_source_args(p) -> None:
    """Where a subcommand reads the experiment's records and config from."""
    p.add_argument("--source", choices=("kafka", "archive"), default="kafka",
                   help="where the rewards, served and item-events records come from (default kafka)")
    p.add_argument("--archive", default=None, metavar="PATH",
                   help="archive root (ROOT/topic=rewards/date=...; default: archive.root of genrec.yaml) "
                        "for --source archive")
    p.add_argument("--experiments", default=None, metavar="YAML",
                   help="experiments file (default: serving.experiments of genrec.yaml)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to read each Kafka topic (default 30)")


def load_experiment(name: str, source: str | None):
    """The :class:`~serving.experiments.config.Experiment` ``name`` from ``source`` or genrec.yaml's file."""
    from infra.config import load_raw, resolve_repo_path
    from serving.experiments.config import ExperimentsConfig

    src = source or load_raw().get("serving", {}).get("experiments") or "infra/experiments.yaml"
    src = resolve_repo_path(src)
    if "\n" not in src and not Path(src).is_file():
        raise FileNotFoundError(f"experiments file {src!r} not found; pass --experiments YAML")
    cfg = ExperimentsConfig.from_yaml(Path(src) if "\n" not in src else src)
    try:
        return cfg.experiment(name)
    except KeyError:
        known = [e.name for e in cfg.experiments()]
        raise ValueError(f"no experiment {name!r} in {src if chr(10) not in src else 'the experiments YAML'}; "
                         f"known: {known}") from None


def read_records(args, experiment: str) -> tuple[dict, str]:
    """The records the report reads (``serving.experiments.report.report_from_records``) and where from.

    Every reward record (the experiment's, and the others' for CUPED's pre-period), every served record
    (latency per arm, coverage, new items) and the items' arrival times (``item-events``), from Kafka or
    the archive, as ``--source`` says.
    """
    from ingest.contract import REWARDS

    if args.source == "archive":
        from infra.config import load_raw
        from serving.experiments.report import read_archive_report_records

        root = args.archive or load_raw().get("archive", {}).get("root")
        if not root:
            raise ValueError("--source archive needs the archive root: pass --archive PATH")
        if not Path(str(root).removeprefix("file://")).is_dir():
            raise FileNotFoundError(f"archive {root!r} does not exist; pass --archive PATH (the root "
                                    "`genrec archive --root` wrote)")
        return read_archive_report_records(root), f"archive {root}"
    from serving.experiments.report import read_report_records

    kafka = kafka_from_args(args)
    return (read_report_records(kafka, experiment, args.timeout, fallback=False),
            f"Kafka {kafka.bootstrap} ({kafka.topic(REWARDS)})")


def run_report(args) -> int:
    from serving.experiments.report import markdown, report_from_records, rewards_of

    exp = load_experiment(args.name, args.experiments)
    records, where = read_records(args, exp.name)
    rewards = records["rewards"]
    mine = rewards_of(exp.name, rewards)
    if not mine:
        raise ValueError(f"no reward records of experiment {exp.name!r} in {where} ({len(rewards)} reward records "
                         "in all); run the reward joiners (`genrec rewards`) over its served sessions, or check "
                         "--namespace / --archive")
    rep = report_from_records(exp, records, plot_path=args.plot)
    if args.json:
        json.dump(rep, sys.stdout, allow_nan=False)
        print()
        return 0
    print(f"{len(mine):,} reward records of {exp.name} ({rep['sessions']:,} sessions, {rep['users']:,} users), "
          f"{len(records['served']):,} served records and {len(records['items'].first_ts):,} items' arrival "
          f"times from {where}\n")
    print(markdown(rep))
    if args.plot:
        print(f"\nplot: {rep['plot']}")
    return 0


def run_promote(args) -> int:
    """``genrec experiments promote``: exit 0 whether it promoted or waits; errors (no data, refused) raise."""
    from actors.model_registry import ModelRegistry, RegistryError
    from infra.config import load_raw, resolve_repo_path
    from serving.experiments.promotion import PromotionRule
    from serving.experiments.report import rewards_of
    from serving.rollout import decide_and_promote

    exp = load_experiment(args.name, args.experiments)
    arm = next((a for a in exp.arms if a.name == args.arm), None)
    if arm is None:
        raise ValueError(f"experiment {exp.name!r} has no arm {args.arm!r}; arms: {[a.name for a in exp.arms]}")
    if not arm.model_version:
        raise ValueError(f"arm {args.arm!r} of {exp.name!r} names no model_version: nothing to promote")
    records, where = read_records(args, exp.name)
    if not rewards_of(exp.name, records["rewards"]):
        raise ValueError(f"no reward records of experiment {exp.name!r} in {where}; run `genrec rewards` first")
    registry = None
    if not args.dry_run:
        uri = args.registry or (load_raw().get("recommender") or {}).get("registry") or ".genrec/registry"
        registry = ModelRegistry(resolve_repo_path(uri))
    decision, promoted, refused = decide_and_promote(exp, args.arm, arm.model_version, records, registry,
                                                     PromotionRule(min_users=args.min_users))
    if refused:
        raise RegistryError(refused)
    if args.json:
        print(json.dumps({"experiment": exp.name, "arm": args.arm, "version": arm.model_version,
                          "promote": decision.promote, "promoted": promoted, "dry_run": args.dry_run,
                          "reasons": list(decision.reasons), "evidence": decision.evidence}))
        return 0
    print(decision.summary())
    if promoted:
        print(f"{promoted} is now the promoted version (replicas follow it within recommender.promoted_poll_s)")
    elif decision.promote:
        print(f"(dry run: {arm.model_version} would be promoted)" if args.dry_run
              else f"{arm.model_version} is already the promoted version")
    return 0
