"""``genrec demo`` (what ``make demo`` runs): the whole product on embedded defaults.

Starts an embedded broker (unless ``KAFKA_BOOTSTRAP`` points at one), builds the
synthetic world, and runs the demo parts of :mod:`infra.demo_parts` in order:
ingest + archive, live sequences, semantic IDs, the generator, fast decoding,
and the Ray Serve app with a first A/B report.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
import traceback
from pathlib import Path


def register(sub) -> None:
    from infra.demo_parts import PARTS

    p = sub.add_parser("demo", help="run the end-to-end demo on embedded defaults",
                       description="Start an embedded Kafka broker, generate the synthetic world and run "
                                   "every demo part in order: " + ", ".join(PARTS) + ".")
    p.add_argument("--quick", action="store_true", help="smaller sizes: finishes in a couple of minutes")
    p.add_argument("--parts", default=",".join(PARTS),
                   help="comma-separated parts to run, in order (default: all)")
    p.add_argument("--workdir", default=None,
                   help="where archives, checkpoints and models go (default .genrec/demo-<time>)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic world")
    p.set_defaults(func=run)


def run(args) -> int:
    from infra.demo_parts import PARTS, DemoContext
    from ingest.kafka_client import KafkaConfig
    from ingest.synthetic import SyntheticWorld, WorldConfig

    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown demo part(s) {unknown}; parts are {PARTS}")
    workdir = Path(args.workdir or f".genrec/demo-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    workdir.mkdir(parents=True, exist_ok=True)

    broker = None
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP")
    if not bootstrap:
        from infra.broker import EmbeddedBroker

        broker = EmbeddedBroker().start()
        bootstrap = broker.bootstrap
        print(f"embedded tansu broker on {bootstrap}")
    namespace = f"demo{int(time.time())}."
    kafka = KafkaConfig(bootstrap=bootstrap, namespace=namespace)
    world_cfg = WorldConfig(seed=args.seed) if not args.quick else WorldConfig.small(seed=args.seed)
    t0 = time.time()
    world = SyntheticWorld(world_cfg)
    print(f"synthetic world: {world.describe()} (built in {time.time() - t0:.1f} s)")
    print(f"work directory: {workdir}   topic namespace: {namespace!r}\n")
    ctx = DemoContext(kafka=kafka, workdir=workdir, world=world, quick=args.quick)
    failed = []
    try:
        for name in parts:
            try:
                mod = importlib.import_module(f"infra.demo_parts.{name}")
            except ModuleNotFoundError as e:
                if e.name == f"infra.demo_parts.{name}":
                    print(f"=== {name}: not built yet, skipped ===\n")
                    continue
                raise
            print(f"=== {mod.TITLE} ===", flush=True)
            t = time.time()
            try:
                mod.run(ctx)
            except Exception:  # a failing part must not hide what the others show
                traceback.print_exc()
                failed.append(name)
                print(f"--- {name} FAILED after {time.time() - t:.1f} s ---\n", flush=True)
                continue
            print(f"--- {name} done in {time.time() - t:.1f} s ---\n", flush=True)
    finally:
        for key, obj in reversed(list(ctx.state.items())):
            stop = getattr(obj, "shutdown", None)
            if callable(stop):
                try:
                    stop()
                except Exception as e:  # best effort at teardown
                    print(f"(shutdown of {key} failed: {e})", file=sys.stderr)
        try:
            import ray

            if ray.is_initialized():
                ray.shutdown()
        except ImportError:
            pass
        if broker is not None:
            broker.stop()
    if failed:
        print(f"demo finished with failing parts: {failed}")
        return 1
    print("demo finished: every part ran.")
    return 0
