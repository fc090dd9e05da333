"""``genrec align``: one alignment round (reward model, IPA/DPO round, gate, experiment arm), or the loop.

A thin shell over :mod:`actors.align_job`: settings come from the ``align:`` section of genrec.yaml, flags
override them. Exit status: 0 the candidate passed its gate, 1 it failed, 2 the round was refused (nothing
published). ``--every DURATION`` repeats the round until SIGTERM / Ctrl-C (run it as a Ray job:
``ray job submit -- genrec align --every 6h``).
"""

from __future__ import annotations

import argparse
import json
import sys


def register(sub) -> None:
    from infra.cpu_priority import add_background_arg

    p = sub.add_parser("align", help="one preference-alignment round: train the session reward model on the "
                                     "archive's newest window, align the promoted version, gate it, put a passing "
                                     "candidate into an experiment arm (--every: repeat)",
                       description="Read the archive's newest window (served + rewards + user-events, histories "
                                   "as of each served time), train the session reward model (stored beside the "
                                   "registry as safetensors + JSON), run one IPA round from the parent (DPO on "
                                   "best/worst of N beam candidates, or --mode feedback on served sessions' real "
                                   "rewards), gate the candidate against its parent (verdict in the registry) and, "
                                   "when it passes, put it into --experiment/--arm of --experiments-file. Settings: "
                                   "the align: section of genrec.yaml; flags override them. Exit 0 passed, 1 gate "
                                   "failed, 2 round refused.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--parent", default=None, help="version to align (default: the registry's promoted one)")
    p.add_argument("--version", default=None, help="candidate name (default: PARENT-a<UTC time>; with --every each "
                                                      "round names its own)")
    p.add_argument("--mode", choices=("reward_model", "feedback"), default=None, help="align.mode")
    p.add_argument("--archive", default=None, metavar="DIR", help="Parquet archive root (align.archive)")
    p.add_argument("--registry", default=None, metavar="URI", help="model registry (align.registry)")
    p.add_argument("--window-days", type=float, default=None, help="newest window read, days; 0 = all "
                                                                   "(align.window_days)")
    p.add_argument("--reward-model", choices=("train", "latest"), default=None,
                   help="train a fresh reward model or reuse the latest stored one (align.reward_model)")
    p.add_argument("--experiment", default=None, help="experiment whose arm takes a passing candidate")
    p.add_argument("--arm", default=None, help="that arm")
    p.add_argument("--experiments-file", default=None, metavar="PATH",
                   help="the experiments YAML rewritten (default: serving.experiments when --experiment is given)")
    p.add_argument("--world", choices=("none", "small", "default"), default=None,
                   help="synthetic world of the simulated canary and the true-gain check (align.gate.world)")
    p.add_argument("--no-canary-required", action="store_true",
                   help="a verdict without a canary may pass (a deployment with no simulator)")
    p.add_argument("--every", default=None, metavar="DURATION",
                   help="repeat every DURATION (30m, 6h, 1d) until SIGTERM; default: one round")
    p.add_argument("--ray-workers", type=int, default=None,
                   help="train through Ray Train with N workers (0 = in this process; align.ray_workers)")
    p.add_argument("--ray-address", default=None, help="Ray cluster for --ray-workers (default: RAY_ADDRESS or local)")
    p.add_argument("--auto-promote", action="store_true", default=None,
                   help="before each round, promote the arm's model when the experiment's sequential A/B report "
                        "says it won (every primary metric significant and better, guardrails clean, no SRM; "
                        "serving/experiments/promotion.py): rounds then chain from the winner. Needs "
                        "--experiment/--arm (align.auto_promote)")
    add_background_arg(p)
    p.add_argument("--json", action="store_true", help="print each round's result as one JSON line")
    p.set_defaults(func=run)


def config_from_args(args):
    """The :class:`actors.align_job.AlignJobConfig`: genrec.yaml / environment, then the flags."""
    from actors.align_job import parse_duration
    from infra.config import load, load_raw, resolve_repo_path

    flags = {"mode": args.mode, "archive": args.archive, "registry": args.registry, "window_days": args.window_days,
             "reward_model": args.reward_model, "experiment": args.experiment, "arm": args.arm,
             "experiments_file": args.experiments_file, "ray_workers": args.ray_workers,
             "every": parse_duration(args.every) if args.every is not None else None,
             "auto_promote": getattr(args, "auto_promote", None)}
    over = {k: v for k, v in flags.items() if v is not None}
    if over.get("experiment") and not over.get("experiments_file"):
        exp = (load_raw().get("serving") or {}).get("experiments", "")
        if exp and "\n" not in exp:
            over["experiments_file"] = resolve_repo_path(exp)
    gate = dict((load_raw().get("align") or {}).get("gate") or {})
    if args.world is not None:
        gate["world"] = args.world
    if args.no_canary_required:
        gate["gate"] = {**(gate.get("gate") or {}), "require_canary": False}
    if gate:
        over["gate"] = gate
    return load(only=("align",), overrides={"align": over})["align"]


def _print(res, args) -> None:
    from models.evaluation.gate import render_checks

    if args.json:
        print(json.dumps(res.to_dict(), default=str), flush=True)
        return
    if res.round is not None:
        print(res.round.summary())
    if res.gate is not None:
        print(render_checks(res.gate.verdict))
    if res.refused:
        print(f"round {res.version}: REFUSED — {res.refused}")
    elif res.gate is not None and not res.passed:
        print(f"{res.version} failed its gate: it never receives traffic")
    print(f"round {res.version} done in {res.round_s:.1f} s" + (f"; now in arm {res.assigned}" if res.assigned else ""),
          flush=True)


def run(args) -> int:
    from actors.align_job import run_align_round, run_every
    if args.background:
        from infra.cpu_priority import make_background

        make_background()

    try:
        cfg = config_from_args(args)
    except ValueError as e:
        print(f"genrec align: {e}", file=sys.stderr)
        return 2
    say = (lambda s: print(s, file=sys.stderr, flush=True)) if args.json else (lambda s: print(s, flush=True))
    if cfg.ray_workers:
        from infra.commands.ray_local import init_ray

        init_ray(args.ray_address, max(2, cfg.ray_workers + 1), namespace="genrec-align")

    def one_round():
        res = run_align_round(cfg, parent=args.parent, version=args.version if not cfg.every else None, say=say)
        _print(res, args)
        return res

    if not cfg.every:
        try:
            return one_round().exit_code
        except ValueError as e:   # no parent, no archive, a damaged version: the message names the fix
            print(f"genrec align: {e}", file=sys.stderr)
            return 2
    say(f"continuous alignment: a round every {cfg.every:g} s until SIGTERM / Ctrl-C")
    run_every(one_round, cfg.every, say=say)
    return 0
