"""``genrec rewards``: run the reward joiners (Ray actors) under their supervisor and print a status line.

``--metrics-port`` also serves the joiners' counters at ``/metrics`` (Prometheus text format,
:class:`actors.reward_supervisor.MetricsServer`), read from the supervisor's status at each scrape.
"""

from __future__ import annotations

from infra.commands.ray_local import init_ray, run_supervised
from infra.commands.topics import add_kafka_args, kafka_from_args


def register(sub) -> None:
    p = sub.add_parser("rewards", help="join served sessions with their user events into one reward each "
                                       "(Ray actors) and print lag, open windows and rewards/s",
                       description="Start one Ray actor per group of served/user-events partitions. Each keeps "
                                   "every served session open for an event-time window, closes it by the "
                                   "watermark and writes exactly one record per session to the rewards topic "
                                   "(checkpoints + read-back of its own output on restart). Prints lag, windows "
                                   "open, rewards/s, late and orphan counts every --interval seconds until "
                                   "Ctrl-C. Settings come from the rewards: section of genrec.yaml; flags "
                                   "override them.")
    add_kafka_args(p)
    p.add_argument("--window-s", type=float, default=None, help="event-time window per session (rewards.window_s)")
    p.add_argument("--lateness-s", type=float, default=None,
                   help="allowed lateness of records (rewards.allowed_lateness_s)")
    p.add_argument("--checkpoint-dir", default=None, help="checkpoint directory or pyarrow URI "
                                                         "(rewards.checkpoint_uri)")
    p.add_argument("--joiners", type=int, default=None, help="number of joiner actors (default: one per partition)")
    p.add_argument("--duration-aware", action="store_true",
                   help="score watch time by its percentile in the user's own sessions (OneRec-V2)")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between status lines")
    p.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0 = until Ctrl-C)")
    p.add_argument("--ray-address", default=None, help="Ray cluster to join (default: RAY_ADDRESS or a local Ray)")
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray (default 2)")
    p.add_argument("--json", action="store_true", help="print status as JSON lines")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus metrics at http://ADDR:PORT/metrics (lag, windows open, rewards, late "
                        "events by reason, orphans, per joiner; 0 = a free port); default: off")
    p.add_argument("--metrics-addr", default="127.0.0.1",
                   help="address the metrics endpoint listens on (default loopback; 0.0.0.0 for a scraper "
                        "on another host)")
    p.set_defaults(func=run)


def config_from_args(args):
    """The :class:`~actors.reward_joiner.RewardJoinerConfig`: genrec.yaml / environment, then the flags."""
    from infra.config import load

    flags = {"window_s": args.window_s, "allowed_lateness_s": args.lateness_s,
             "checkpoint_uri": args.checkpoint_dir, "num_joiners": args.joiners}
    overrides = {k: v for k, v in flags.items() if v is not None}
    cfg = load(only=("rewards",), overrides={"rewards": overrides})["rewards"]
    if args.duration_aware:
        from dataclasses import replace

        cfg = replace(cfg, reward=replace(cfg.reward, duration_aware=True))
    return cfg


def run(args) -> int:
    from actors.reward_supervisor import MetricsServer, RewardSupervisor, format_status

    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        raise SystemExit(f"--metrics-port {args.metrics_port} is not a TCP port (0 picks a free one)")
    kafka = kafka_from_args(args)
    cfg = config_from_args(args)
    init_ray(args.ray_address, args.num_cpus)
    sup = RewardSupervisor(kafka, cfg).start()
    metrics = None
    if args.metrics_port is not None:
        metrics = MetricsServer(lambda: sup.status(timeout_s=5.0), args.metrics_port, args.metrics_addr)

    def banner(s) -> str:
        line = (f"{len(s.joiners)} reward joiner(s) over {s.num_partitions} partitions of "
                f"{kafka.topic('served')} + {kafka.topic('user-events')} -> {kafka.topic('rewards')}; "
                f"window {cfg.window_s:g}s, lateness {cfg.allowed_lateness_s:g}s; checkpoints in "
                f"{cfg.checkpoint_uri}")
        return line + (f"; metrics at {metrics.url}" if metrics is not None else "")

    try:
        return run_supervised(sup, args, banner=banner, line=lambda st: format_status(st).splitlines()[-1],
                              stopped="reward joiners stopped (final checkpoints written)")
    finally:
        if metrics is not None:
            metrics.close()
