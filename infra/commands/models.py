"""``genrec models``: the model registry — list, show, gate (:mod:`actors.gate_job`), promote, rollback."""

from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    p = sub.add_parser("models", help="the model registry: list, show, gate, promote, rollback versions",
                       description="Every generator version is stored in the model registry as safetensors "
                                   "weights plus JSON config and metadata (actors/model_registry.py). Serving "
                                   "loads versions by name; `genrec serve` serves the promoted one.")
    p.add_argument("--registry", default=None, metavar="URI",
                   help="registry directory or pyarrow URI (default: recommender.registry of genrec.yaml)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    acts = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    acts.add_parser("list", help="every version, oldest first, with its parent, verdict and test NDCG@10")
    show = acts.add_parser("show", help="one version's metadata, metrics and gate verdict")
    show.add_argument("version")
    gate = acts.add_parser("gate", help="judge a version against its parent (held-out NDCG@10, validity, "
                                        "coverage, simulated canary) and store the verdict",
                           description="Evaluates VERSION and its parent on the same held-out split and, on a "
                                       "synthetic world, serves both models' sessions to the same simulated users. "
                                       "The verdict is written to the registry; a version that fails can be "
                                       "neither promoted nor put into an experiment arm. Exit status 1 when it "
                                       "fails.")
    gate.add_argument("version")
    gate.add_argument("--parent", default=None,
                      help="judge against this version (default: the registered parent, else the promoted one)")
    gate.add_argument("--data", default="synthetic",
                      help="the data the held-out split comes from, as `genrec train --data` (default synthetic)")
    gate.add_argument("--archive", default="", metavar="DIR", help="a Parquet archive root instead of --data")
    gate.add_argument("--max-events", type=int, default=0, help="first N user events only (0 = all)")
    gate.add_argument("--seed", type=int, default=0, help="the synthetic world's seed, as `genrec train --seed`")
    gate.add_argument("--world", default="auto", choices=("auto", "default", "small", "none"),
                      help="the canary's synthetic world (auto: the one --data names; none: no canary)")
    gate.add_argument("--max-users", type=int, default=500, help="held-out users ranked (0 = all)")
    gate.add_argument("--canary-users", type=int, default=300, help="simulated users of the canary")
    gate.add_argument("--max-ndcg-drop", type=float, default=None,
                      help="largest relative NDCG@10 drop vs the parent (default 0.02)")
    gate.add_argument("--min-coverage-ratio", type=float, default=None,
                      help="least coverage@10 as a share of the parent's (default 0.8)")
    gate.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                      help="print the stored verdict as JSON (progress goes to stderr)")
    gate.add_argument("--no-canary-required", action="store_true",
                      help="pass without a simulated canary when no world is available")
    prom = acts.add_parser("promote", help="make a version the default that serving loads")
    prom.add_argument("version")
    prom.add_argument("--no-gate", action="store_true",
                      help="promote a version that has no gate verdict (a first, hand-checked version)")
    acts.add_parser("rollback", help="restore the version promoted before the current one")
    p.set_defaults(func=run)


def _registry(args):
    from actors.model_registry import ModelRegistry
    from infra import config

    uri = args.registry
    if not uri:
        uri = config.load(None, only=("recommender",))["recommender"].registry
        if not uri:
            raise ValueError("no model registry: pass --registry URI or set recommender.registry in genrec.yaml")
    return ModelRegistry(config.resolve_repo_path(uri) if "://" not in uri else uri)


def _row(info, promoted: str | None) -> str:
    test = (info.metrics.get("test") or {}).get("ndcg10")
    verdict = "-" if info.verdict is None else ("passed" if info.verdict.get("passed") else "FAILED")
    return (f"{'*' if info.version == promoted else ' '} {info.version:<24} parent {info.parent or '-':<16} "
            f"gate {verdict:<7} test NDCG@10 {'-' if test is None else f'{test:.4f}'}")


def run(args) -> int:
    reg = _registry(args)
    if args.action == "list":
        infos, promoted = reg.versions(), reg.promoted()
        if args.json:
            print(json.dumps({"promoted": promoted, "versions": [i.to_dict() for i in infos]}))
        elif not infos:
            print(f"no versions in {reg.uri}; publish one with `genrec train --registry {reg.uri} --version v1`")
        else:
            print(f"{reg.uri} (* = promoted)")
            for info in infos:
                print(_row(info, promoted))
    elif args.action == "show":
        print(json.dumps({**reg.info(args.version).to_dict(), "promoted": reg.promoted() == args.version}, indent=2))
    elif args.action == "gate":
        return _gate(reg, args)
    elif args.action == "promote":
        previous = reg.promote(args.version, require_verdict=not args.no_gate)
        print(json.dumps({"promoted": args.version, "previous": previous}) if args.json else
              f"promoted {args.version} (previous: {previous or 'none'}); `genrec models rollback` undoes it")
    elif args.action == "rollback":
        restored = reg.rollback()
        print(json.dumps({"promoted": restored}) if args.json else f"rolled back to {restored}")
    return 0


def _gate(reg, args) -> int:
    """Run the gate job on ``args.version``; print its checks (or the stored verdict as JSON). 1 when it failed."""
    import sys

    from actors.gate_job import GateJobConfig, run_gate_job
    from models.evaluation.gate import GateConfig, render_checks

    bounds = {k: v for k, v in (("max_ndcg_drop", args.max_ndcg_drop),
                                ("min_coverage_ratio", args.min_coverage_ratio)) if v is not None}
    if args.no_canary_required:
        bounds["require_canary"] = False
    cfg = GateJobConfig(data=args.data, archive=args.archive, max_events=args.max_events, seed=args.seed,
                        world=args.world, max_users=args.max_users, canary_users=args.canary_users,
                        gate=GateConfig.from_dict(bounds))
    say = (lambda s: print(s, file=sys.stderr, flush=True)) if args.json else print
    res = run_gate_job(reg, args.version, args.parent, cfg, say=say)
    if args.json:
        print(json.dumps(res.stored))
    else:
        print(render_checks(res.verdict))
        print(f"verdict stored in {reg.uri}" + ("" if res.verdict.passed else
                                                 f"; {args.version} cannot be promoted or put into an arm"))
    return 0 if res.verdict.passed else 1
