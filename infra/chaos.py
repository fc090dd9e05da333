"""The chaos run: the whole pipeline under closed-loop traffic and a seeded fault schedule, then the audit.

What runs (docs/decisions/032-chaos-run.md): an embedded tansu broker (:class:`infra.broker.EmbeddedBroker`);
a local multi-node Ray (``ray.cluster_utils.Cluster``: a head without CPUs for actors and two worker nodes);
on it the sequence shards (:class:`actors.supervisor.SequenceSupervisor`), the item indexer actor
(:func:`actors.item_indexer.item_indexer_actor`), the reward joiners (:class:`actors.reward_supervisor.RewardSupervisor`)
and the Ray Serve app (ingress replica + its recommender child process, :mod:`serving.application`) behind the
head's proxy; the archiver (``genrec archive``) as a process of its own, restarted by this harness. Traffic:
:func:`serving.simulator.simulate` (the synthetic world's users over HTTP; their events back through
``POST /v1/events``), and the world's later items sent to ``item-events`` as they "arrive".

Faults (:func:`fault_schedule`, seeded): ``kill -9`` of every component kind at random moments, several times
each; one Ray node loss (``Cluster.remove_node`` of the worker holding most of the actors: they restart on the
other); a broker pause (SIGSTOP … SIGCONT, longer than the clients' timeouts). Then the run drains (faults
stop, a trickle of traffic moves event time past the reward windows, every consumer reaches the topics' ends)
and :func:`ingest.audit.read_and_audit` checks every invariant, including the shards' and the catalog's
states against a fault-free replay. Invariant: a run with ``audit_violations == 0`` lost and doubled nothing
the auditor can see. An optional soak phase (no faults) samples each component's resident memory.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

#: Component kinds the schedule kills (each restarts: Ray, Serve or this harness brings it back).
KINDS = ("archive", "sequence_shard", "item_indexer", "reward_joiner", "serving_replica", "recommender")


@dataclass(frozen=True)
class ChaosConfig:
    """One chaos run. Errors name the bad value and the fix."""

    workdir: str                        # archive, checkpoints, logs
    duration_s: float = 60.0            # seconds of traffic with faults
    seed: int = 0
    kills_per_kind: int = 2             # kill -9 per component kind
    node_loss: bool = True              # remove one Ray worker node mid-run
    broker_pause_s: float = 8.0         # SIGSTOP the broker this long (0 = no pause); > client_timeout_s
    rate: float = 3.0                   # simulator arrivals a second
    users: int = 60
    client_timeout_s: float = 5.0       # simulator per-request timeout
    reward_window_s: float = 4.0
    reward_lateness_s: float = 1.0
    soak_s: float = 0.0                 # fault-free phase after the drain sampling memory (0 = none)
    sample_s: float = 2.0               # memory sample period
    max_rss_slope_mb_per_h: float = 500.0   # soak fails above this growth in its second half
    partitions: int = 2                 # user-events / served partitions
    drain_timeout_s: float = 240.0      # bound on the drain (derived waits stop early when caught up)
    worker_cpus: int = 2                # CPUs of each Ray worker node

    def __post_init__(self) -> None:
        if self.duration_s < 10:
            raise ValueError(f"ChaosConfig.duration_s={self.duration_s} must be >= 10 (faults need room)")
        if self.kills_per_kind < 0:
            raise ValueError(f"ChaosConfig.kills_per_kind={self.kills_per_kind} must be >= 0")
        if self.broker_pause_s and self.broker_pause_s <= self.client_timeout_s:
            raise ValueError(f"ChaosConfig.broker_pause_s={self.broker_pause_s} must exceed client_timeout_s="
                             f"{self.client_timeout_s} (the pause must outlast the clients' timeouts), or be 0")
        if self.rate <= 0 or self.users < 1:
            raise ValueError(f"ChaosConfig rate={self.rate} and users={self.users} must be positive")
        if self.partitions < 1 or self.worker_cpus < 1:
            raise ValueError(f"ChaosConfig partitions={self.partitions}, worker_cpus={self.worker_cpus} must be >= 1")


@dataclass(frozen=True)
class Fault:
    at_s: float                          # seconds after traffic starts
    kind: str                            # a KINDS entry, "node_loss" or "broker_pause"


def fault_schedule(cfg: ChaosConfig) -> list[Fault]:
    """The seeded faults in time order: kills spread over [10 %, 85 %] of the run, the node loss near the middle,
    the broker pause at a third; kills at least 1.5 s apart so each restart is seen on its own."""
    rng = random.Random(cfg.seed)
    lo, hi = 0.1 * cfg.duration_s, 0.85 * cfg.duration_s
    faults = [Fault(rng.uniform(lo, hi), k) for k in KINDS for _ in range(cfg.kills_per_kind)]
    if cfg.node_loss:
        faults.append(Fault(0.5 * cfg.duration_s, "node_loss"))
    if cfg.broker_pause_s:
        faults.append(Fault(0.3 * cfg.duration_s, "broker_pause"))
    faults.sort(key=lambda f: f.at_s)
    out, last = [], -1e9
    for f in faults:
        at = max(f.at_s, last + 1.5)
        out.append(Fault(at, f.kind))
        last = at
    return out


# ---- processes ---------------------------------------------------------------------------------------

def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def descendants(root: int) -> list[int]:
    """Every live process below ``root`` (this harness's own tree: never another user's Ray)."""
    parent = {int(p): _ppid(int(p)) for p in os.listdir("/proc") if p.isdigit()}
    children: dict[int, list[int]] = {}
    for p, pp in parent.items():
        children.setdefault(pp, []).append(p)
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` in MB from /proc (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


# ---- the run -----------------------------------------------------------------------------------------

@dataclass
class ChaosResult:
    kills: dict[str, int] = field(default_factory=dict)
    node_losses: int = 0
    broker_pauses: int = 0
    node_loss_recovery_s: float | None = None
    audit: dict = field(default_factory=dict)
    audit_lines: list[str] = field(default_factory=list)
    simulation: dict = field(default_factory=dict)
    restarts_seen: dict[str, int] = field(default_factory=dict)
    rss_slope_mb_per_h: dict[str, float] = field(default_factory=dict)       # over the whole soak
    rss_late_slope_mb_per_h: dict[str, float] = field(default_factory=dict)  # over its second half (no warm-up)
    rss_mb: dict[str, tuple[float, float]] = field(default_factory=dict)     # (first, last) sample
    rss_samples: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def violations(self) -> int:
        return int(self.audit.get("violations", -1))


class ChaosRun:
    """Build the pipeline, run traffic + faults, drain, audit; :meth:`close` tears every part down."""

    def __init__(self, cfg: ChaosConfig, log=print):
        self.cfg, self.log = cfg, log
        self.work = Path(cfg.workdir)
        self.work.mkdir(parents=True, exist_ok=True)
        self.result = ChaosResult(kills={k: 0 for k in KINDS})
        self.broker = self.cluster = self.seq = self.rewards = self.indexer = None
        self.archive_proc: subprocess.Popen | None = None
        self._archive_stop = threading.Event()
        self._closed = False
        self._lock = threading.Lock()

    # -- build -----------------------------------------------------------------------------------
    def start(self) -> "ChaosRun":
        import numpy as np
        import ray
        from ray.cluster_utils import Cluster

        from ingest.contract import DEAD_LETTERS, ITEM_EVENTS, REWARDS, SERVED, USER_EVENTS
        from ingest.kafka_client import KafkaConfig
        from ingest.synthetic import SyntheticWorld, WorldConfig
        from ingest.topics import TopicsConfig, ensure_topics
        from infra.broker import EmbeddedBroker
        from models.sid.rq_kmeans import RQKMeans, RQKMeansConfig

        cfg = self.cfg
        t0 = time.monotonic()
        self.broker = EmbeddedBroker().start()
        self.kafka = KafkaConfig(bootstrap=self.broker.bootstrap, namespace=f"chaos{uuid.uuid4().hex[:6]}.")
        n = cfg.partitions
        ensure_topics(self.kafka, TopicsConfig(partitions={USER_EVENTS: n, SERVED: n, REWARDS: 1, ITEM_EVENTS: 1,
                                                           DEAD_LETTERS: 1}))
        self.world = SyntheticWorld(WorldConfig.small(seed=cfg.seed))
        rng = np.random.default_rng(cfg.seed)
        self.emb = rng.normal(size=(len(self.world.item_ids), 8)).astype(np.float32)    # [I, 8] item embeddings
        self.tokenizer = RQKMeans(RQKMeansConfig(codebook_size=8, n_iter=5)).fit(self.emb)
        initial = {e.item_id for e in self.world.initial_catalog()}
        ids = list(self.world.item_ids)
        self.first_items = [i for i in ids if i in initial]
        self.later_items = [i for i in ids if i not in set(self.first_items)]
        self._send_items(self.first_items)

        os.environ.setdefault("RAY_AUTH_MODE", "disabled")     # a purely local cluster of this process
        os.environ.setdefault("RAY_worker_niceness", "0")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        os.environ.setdefault("RAY_raylet_start_wait_time_s", "120")   # a busy 2-core host registers raylets late
        for attempt in range(3):
            try:
                self.cluster = Cluster(initialize_head=True, head_node_args={
                    "num_cpus": 0, "include_dashboard": False, "resources": {"head": 1}})
                self.workers = [self.cluster.add_node(num_cpus=cfg.worker_cpus) for _ in range(2)]
                self.cluster.wait_for_nodes()
                break
            except Exception:
                if self.cluster is not None:
                    self.cluster.shutdown()
                    self.cluster = None
                if attempt == 2:
                    raise
        ray.init(address=self.cluster.address, namespace=f"chaos-{uuid.uuid4().hex[:6]}", log_to_driver=False,
                 configure_logging=False)
        self._start_actors()
        self._start_archive()
        self._start_serving()
        self.result.timings["startup_s"] = round(time.monotonic() - t0, 1)
        return self

    def _send_items(self, items: list[str]) -> None:
        from ingest.contract import ItemEvent
        from ingest.producer import EventProducer

        with EventProducer(self.kafka) as p:
            for it in items:
                k = self.world.item_index(it)
                p.send(ItemEvent(item_id=it, ts=int(time.time() * 1000), title=f"item {it}",
                                 embedding=self.emb[k].tolist()))

    def _start_actors(self) -> None:
        from actors.checkpoint import CheckpointConfig
        from actors.item_indexer import ItemIndexerConfig, item_indexer_actor
        from actors.reward_joiner import RewardJoinerConfig
        from actors.reward_supervisor import RewardSupervisor
        from actors.sequence_state import SequenceConfig
        from actors.supervisor import SequenceSupervisor, SupervisorConfig
        from models.sid.tokenizer import tokenizer_to_bytes

        cfg = self.cfg
        self.seq_cfg = SequenceConfig(capacity=64, dedup_window=8192)
        self.seq = SequenceSupervisor(SupervisorConfig(
            kafka=self.kafka, checkpoint=CheckpointConfig(uri=str(self.work / "sequences"), every_events=2000,
                                                          every_s=1.0),
            num_shards=cfg.partitions, sequence=self.seq_cfg, monitor_s=1.0, num_cpus=0.25,
            max_restarts=-1)).start()
        self.indexer_cfg = ItemIndexerConfig(name="chaos-indexer", checkpoint_uri=str(self.work / "indexer"),
                                             checkpoint_every_s=1.0)
        self.indexer = item_indexer_actor(max_restarts=-1, num_cpus=0.25).options(name="chaos-indexer").remote(
            self.kafka, tokenizer_to_bytes(self.tokenizer), self.indexer_cfg)
        self.reward_cfg = RewardJoinerConfig(window_s=cfg.reward_window_s, allowed_lateness_s=cfg.reward_lateness_s,
                                             checkpoint_uri=str(self.work / "rewards"), checkpoint_every_s=1.0,
                                             idle_partition_s=None, max_drift_s=None, num_joiners=cfg.partitions, num_cpus=0.25,
                                             max_restarts=-1)
        self.rewards = RewardSupervisor(self.kafka, self.reward_cfg).start()
        self.seq.wait_ready(300)
        self.rewards.wait_ready(300)
        import ray

        ray.get(self.indexer.status.remote(), timeout=300)

    def _start_archive(self) -> None:
        from ingest.contract import SERVED, USER_EVENTS

        self.archive_root = self.work / "archive"
        cmd = [sys.executable, "-m", "infra.cli", "archive", "--bootstrap", self.kafka.bootstrap, "--namespace",
               self.kafka.namespace, "--root", str(self.archive_root), "--topics", f"{USER_EVENTS},{SERVED}",
               "--flush-interval", "1"]
        log = open(self.work / "archive.log", "ab")

        def spawn():
            return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=str(Path(__file__).parents[1]))

        self.archive_proc = spawn()
        self.archive_restarts = 0

        def keep_alive():            # the archiver's supervisor: a dead archiver is started again
            while not self._archive_stop.wait(0.5):
                if self.archive_proc.poll() is not None:
                    self.archive_proc = spawn()
                    self.archive_restarts += 1

        self._archive_keeper = threading.Thread(target=keep_alive, name="chaos-archive", daemon=True)
        self._archive_keeper.start()

    def _start_serving(self) -> None:
        import httpx
        from ray import serve

        from infra.broker import free_port
        from serving.application import AppArgs, app_builder

        spec = self.seq.router_spec()   # histories from the sequence shards, as a deployment reads them
        sections = {
            "kafka": {"bootstrap": self.kafka.bootstrap, "namespace": self.kafka.namespace},
            "serving": {"admin_token": uuid.uuid4().hex + uuid.uuid4().hex, "max_inflight": 32,
                        "topology": "colocated"},
            "recommender": {"level_sizes": [8, 8, 8], "max_batch_size": 8,
                            "history": "shards", "shard_names": spec["names"],
                            "shard_namespace": spec["namespace"], "num_partitions": spec["num_partitions"],
                            "models": [{"version": "v1", "seed": 1, "config": {"d_model": 32, "max_history": 20}}]},
        }
        port = free_port()
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        serve.run(app_builder(AppArgs.model_validate(sections)), name="genrec", route_prefix="/", blocking=False)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/readyz", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError("the Serve app did not become ready in 300 s")

    # -- component processes -----------------------------------------------------------------------
    def pids(self) -> dict[str, list[int]]:
        """Current pids of every component (actors by their own ``pid()``/status, Serve by process title)."""
        import ray

        out: dict[str, list[int]] = {k: [] for k in KINDS}
        out["broker"] = [self.broker.proc.pid] if self.broker and self.broker.proc else []
        if self.archive_proc is not None and self.archive_proc.poll() is None:
            out["archive"] = [self.archive_proc.pid]
        for kind, handles in (("sequence_shard", self.seq.shards), ("reward_joiner", self.rewards.joiners)):
            for h in handles:
                try:
                    out[kind].append(ray.get(h.pid.remote(), timeout=5))
                except Exception:  # noqa: BLE001 - restarting
                    pass
        tree = set(descendants(os.getpid()))      # only this run's processes are ever touched
        for a in ray._private.state.actors().values():       # the GCS actor table of this run's cluster
            name, pid = a.get("Name") or "", int(a.get("Pid") or 0)
            if a.get("State") != "ALIVE" or pid not in tree:
                continue
            if name == "chaos-indexer":
                out["item_indexer"].append(pid)
            elif name.startswith("SERVE_REPLICA") and "#Ingress#" in name:
                out["serving_replica"].append(pid)
        replicas = set(out["serving_replica"])
        out["recommender"] = [p for p in tree if _ppid(p) in replicas and "spawn_main" in _cmdline(p)]
        return out

    def kill(self, kind: str, rng: random.Random) -> bool:
        """``kill -9`` one process of ``kind`` (picked with ``rng``); False when none is up right now."""
        pids = self.pids().get(kind, [])
        if not pids:
            return False
        pid = rng.choice(sorted(pids))
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        self.result.kills[kind] += 1
        self.log(f"  kill -9 {kind} (pid {pid})")
        return True

    def lose_node(self) -> float:
        """Remove the worker node holding most of this run's actors; returns the time it went."""
        import ray

        actors = {a["ActorID"]: a for a in ray._private.state.actors().values() if a.get("State") == "ALIVE"} \
            if hasattr(ray._private.state, "actors") else {}
        count = {w.node_id: 0 for w in self.workers}
        for a in actors.values():
            nid = (a.get("Address") or {}).get("NodeID")
            if nid in count:
                count[nid] += 1
        victim = max(self.workers, key=lambda w: count.get(w.node_id, 0))
        self.log(f"  node loss: removing worker {victim.node_id[:8]} with {count.get(victim.node_id, 0)} actors")
        self.cluster.remove_node(victim, allow_graceful=False)
        self.workers.remove(victim)
        self.result.node_losses += 1
        return time.monotonic()

    def pause_broker(self, seconds: float) -> None:
        pid = self.broker.proc.pid
        self.log(f"  broker pause: SIGSTOP for {seconds:g} s")
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            os.kill(pid, signal.SIGCONT)
        self.result.broker_pauses += 1

    # -- phases --------------------------------------------------------------------------------------
    def _topic_ends(self) -> dict[str, dict[int, int]]:
        from ingest.contract import ITEM_EVENTS, SERVED, USER_EVENTS
        from ingest.topic_snapshot import read_topic_messages

        ends = {}
        for t in (USER_EVENTS, SERVED, ITEM_EVENTS):
            e: dict[int, int] = {}
            for m in read_topic_messages(self.kafka, t, 120):
                e[m.partition] = max(e.get(m.partition, 0), m.offset + 1)
            ends[t] = e
        return ends

    def _recovered(self, ends: dict[str, dict[int, int]]) -> bool:
        import httpx

        from ingest.contract import USER_EVENTS

        try:
            ok = httpx.post(self.url + "/v1/recommend", json={"user_id": self.world.user_ids[0], "k": 5},
                            timeout=5).status_code == 200
        except httpx.HTTPError:
            ok = False
        return ok and self.seq.caught_up(ends[USER_EVENTS], timeout_s=5)

    def run(self) -> ChaosResult:
        """Traffic with faults, the drain, the audit (and the soak when configured)."""
        from serving.simulator import SimulatorConfig, simulate

        cfg = self.cfg
        stop = threading.Event()
        sims = []

        def traffic(duration, rate, seed):
            sc = SimulatorConfig(url=self.url, users=cfg.users, rate=rate, duration_s=duration, k=5,
                                 concurrency=32, timeout_s=cfg.client_timeout_s, seed=seed, event_retries=0)
            sims.append(asyncio.run(simulate(sc, self.world, stop=stop)))

        def items():               # the world's later items arrive over the run
            chunk = max(1, len(self.later_items) // 10)
            for i in range(0, len(self.later_items), chunk):
                if stop.wait(cfg.duration_s / 12):
                    return
                try:
                    self._send_items(self.later_items[i:i + chunk])
                except Exception as e:  # noqa: BLE001 - a send during the broker pause may fail: not acked
                    self.log(f"  item send failed ({type(e).__name__}); the next chunk goes on")

        rng = random.Random(cfg.seed + 1)
        schedule = fault_schedule(cfg)
        self.log(f"chaos: {len(schedule)} faults over {cfg.duration_s:g} s of traffic at {cfg.rate:g}/s")
        t_traffic = threading.Thread(target=traffic, args=(cfg.duration_s, cfg.rate, cfg.seed), daemon=True)
        t_items = threading.Thread(target=items, daemon=True)
        t0 = time.monotonic()
        t_traffic.start()
        t_items.start()
        recovery: dict = {}
        for f in schedule:
            wait = t0 + f.at_s - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            if f.kind == "node_loss":
                lost_at = self.lose_node()
                ends = self._topic_ends()

                def watch(lost_at=lost_at, ends=ends):
                    deadline = lost_at + cfg.drain_timeout_s
                    while time.monotonic() < deadline:
                        if self._recovered(ends):
                            recovery["s"] = time.monotonic() - lost_at
                            return
                        time.sleep(0.5)

                threading.Thread(target=watch, name="chaos-recovery", daemon=True).start()
            elif f.kind == "broker_pause":
                self.pause_broker(cfg.broker_pause_s)
            else:
                give_up = time.monotonic() + 60    # a process restarting right now (after the node loss): wait
                while not self.kill(f.kind, rng) and time.monotonic() < give_up:
                    time.sleep(0.5)
        t_traffic.join()
        stop.set()
        t_items.join(timeout=60)
        self.result.timings["traffic_s"] = round(time.monotonic() - t0, 1)
        self._drain(sims)
        deadline = time.monotonic() + cfg.drain_timeout_s
        while "s" not in recovery and time.monotonic() < deadline and cfg.node_loss:
            time.sleep(0.5)
        self.result.node_loss_recovery_s = round(recovery["s"], 2) if "s" in recovery else None
        self._audit(sims)
        if cfg.soak_s:
            self._soak()
        return self.result

    def _drain(self, sims: list) -> None:
        """Faults are over: a trickle moves event time past every window, then every consumer reaches the ends."""
        from serving.simulator import SimulatorConfig, simulate

        import httpx

        cfg = self.cfg
        t = time.monotonic()
        deadline = t + cfg.drain_timeout_s
        while True:                     # the app may still be replacing a replica: wait for an answer first
            try:
                if httpx.post(self.url + "/v1/recommend", json={"user_id": self.world.user_ids[0], "k": 5},
                              timeout=10).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the app at {self.url} did not answer within {cfg.drain_timeout_s:g} s "
                                   "after the faults")
            time.sleep(1.0)
        trickle_s = cfg.reward_window_s + cfg.reward_lateness_s + 4
        sc = SimulatorConfig(url=self.url, users=cfg.users, rate=max(1.0, cfg.rate / 2), duration_s=trickle_s, k=5,
                             concurrency=8, timeout_s=cfg.client_timeout_s * 4, seed=cfg.seed + 99, event_retries=0,
                             preflight=False)
        sims.append(asyncio.run(simulate(sc, self.world)))
        self._caught_up(time.monotonic() + cfg.drain_timeout_s)
        self.result.timings["drain_s"] = round(time.monotonic() - t, 1)

    def _caught_up(self, deadline: float) -> dict:
        import ray

        from ingest import archive as arch
        from ingest.contract import ITEM_EVENTS, SERVED, USER_EVENTS

        ends = self._topic_ends()
        waiting = []
        while time.monotonic() < deadline:
            waiting = []
            if not self.seq.caught_up(ends[USER_EVENTS]):
                waiting.append("sequence shards")
            if not self.rewards.caught_up({SERVED: ends[SERVED], USER_EVENTS: ends[USER_EVENTS]}):
                waiting.append("reward joiners")
            for t in (USER_EVENTS, SERVED):
                have = arch.resume_offsets(self.archive_root, t)
                if any(have.get(p, 0) < e for p, e in ends[t].items()):
                    waiting.append(f"archive {t}")
            try:
                offs = ray.get(self.indexer.status.remote(), timeout=10)["offsets"]
                if any(int(offs.get(p, offs.get(str(p), 0))) < e for p, e in ends[ITEM_EVENTS].items()):
                    waiting.append("item indexer")
            except Exception:  # noqa: BLE001 - restarting
                waiting.append("item indexer")
            if not waiting:
                self._rewards_settled(deadline)
                return ends
            time.sleep(1.0)
        detail = {"ends": ends, "joiners": [{k: r.get(k) for k in ("state", "offsets", "lag", "watermark")}
                                            for r in self.rewards.status()["joiners"]],
                  "shards": [{k: r.get(k) for k in ("state", "offsets", "lag")} for r in self.seq.status()["shards"]]}
        raise TimeoutError(f"the drain did not finish: still waiting for {', '.join(waiting)}: {detail}")

    def _rewards_settled(self, deadline: float) -> None:
        """Until the joiners' sent + found-in-topic counts and ``rewards``' size stop changing (rewards of the
        windows the last records closed are sent after those records were read)."""
        from ingest.contract import REWARDS
        from ingest.topic_snapshot import read_topic_messages

        last = None
        while time.monotonic() < deadline:
            t = self.rewards.status()["total"]
            now = (t["rewards_sent"], t["rewards_already_in_topic"], t["open_windows"],
                   len(read_topic_messages(self.kafka, REWARDS, 60)))
            if now == last:
                return
            last = now
            time.sleep(1.5)

    def _audit(self, sims: list) -> None:
        import ray

        from ingest.audit import read_and_audit
        from models.sid.catalog import Catalog

        answered, acked, unknown = [], [], 0
        for s in sims:
            answered += s.answered_request_ids()
            acked += s.acked_event_ids()
            unknown += (sum(s.errors.values()) + sum(n for code, n in s.status.items() if code >= 500 and code != 503)
                        + sum(s.client_errors.values()))      # a 200 the client could not use: its id is not kept
        live = {}
        for h in self.seq.shards:
            live.update(ray.get(h.snapshot.remote(), timeout=60))
        catalog = Catalog.from_bytes(ray.get(self.indexer.snapshot.remote(), timeout=60))
        rep = read_and_audit(self.kafka, window_ms=int(self.cfg.reward_window_s * 1000),
                             lateness_ms=int(self.cfg.reward_lateness_s * 1000), archive=str(self.archive_root),
                             acked=acked, answered=answered, unknown=unknown, sequence_config=self.seq_cfg,
                             live_sequences=live, live_catalog=catalog, tokenizer=self.tokenizer,
                             indexer_config=self.indexer_cfg, timeout_s=120)
        self.result.audit = rep.to_dict()
        self.result.audit_lines = rep.lines()
        self.result.simulation = {"sent": sum(s.sent for s in sims), "answered_200": len(answered),
                                  "unknown_outcome": unknown, "events_acked": len(acked),
                                  "status": dict(sum((s.status for s in sims), start=Counter()))}
        self.result.restarts_seen = {"archive": self.archive_restarts}
        t = self.rewards.status()["total"]
        self.result.simulation["joiners"] = {k: t[k] for k in ("served", "closed", "rewards_sent",
                                                              "rewards_already_in_topic", "open_windows",
                                                              "late_served", "duplicates", "recreated")}

    def _soak(self) -> None:
        """Fault-free traffic for ``soak_s``; each component's resident memory sampled every ``sample_s``."""
        from scipy.stats import linregress

        from serving.simulator import SimulatorConfig, simulate

        cfg = self.cfg
        samples: dict[str, list[tuple[float, float]]] = {}
        stop = threading.Event()

        def sample():
            t0 = time.monotonic()
            while not stop.wait(cfg.sample_s):
                t_h = (time.monotonic() - t0) / 3600
                for kind, pids in self.pids().items():
                    if pids:
                        samples.setdefault(kind, []).append((t_h, sum(rss_mb(p) for p in pids)))

        th = threading.Thread(target=sample, name="chaos-rss", daemon=True)
        th.start()
        sc = SimulatorConfig(url=self.url, users=cfg.users, rate=cfg.rate, duration_s=cfg.soak_s, k=5,
                             concurrency=32, timeout_s=cfg.client_timeout_s, seed=cfg.seed + 7)
        asyncio.run(simulate(sc, self.world))
        stop.set()
        th.join(timeout=30)
        for kind, pts in sorted(samples.items()):
            if len(pts) >= 3:
                t, mb = zip(*pts)
                self.result.rss_slope_mb_per_h[kind] = round(float(linregress(t, mb).slope), 1)
                self.result.rss_mb[kind] = (round(mb[0], 1), round(mb[-1], 1))
                late = pts[len(pts) // 2:]     # caches fill early: a leak is what still grows in the second half
                if len(late) >= 3:
                    lt, lmb = zip(*late)
                    self.result.rss_late_slope_mb_per_h[kind] = round(float(linregress(lt, lmb).slope), 1)
        self.result.rss_samples = sum(len(v) for v in samples.values())

    # -- teardown --------------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop everything this run started (safe to call twice, and after a failed start)."""
        if self._closed:
            return
        self._closed = True
        if self.broker is not None and self.broker.proc is not None:
            try:
                os.kill(self.broker.proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        self._archive_stop.set()
        if self.archive_proc is not None:
            self.archive_proc.terminate()
            try:
                self.archive_proc.wait(10)
            except subprocess.TimeoutExpired:
                self.archive_proc.kill()
                self.archive_proc.wait(10)
        try:
            import ray

            if ray.is_initialized():
                try:
                    from ray import serve

                    serve.shutdown()
                except Exception:  # noqa: BLE001 - best effort at teardown
                    pass
                for sup in (self.seq, self.rewards):
                    if sup is not None:
                        try:
                            sup.shutdown(checkpoint=False, timeout_s=10)
                        except Exception:  # noqa: BLE001
                            pass
                ray.shutdown()
        finally:
            if self.cluster is not None:
                self.cluster.shutdown()
            if self.broker is not None:
                self.broker.stop()


def run_chaos(cfg: ChaosConfig, log=print) -> ChaosResult:
    """Start, run, audit and tear down one chaos run."""
    run = ChaosRun(cfg, log)
    try:
        run.start()
        return run.run()
    finally:
        run.close()


def metrics_of(cfg: ChaosConfig, r: ChaosResult) -> dict:
    """The benchmark's figures (suite ``chaos``)."""
    checks = r.audit.get("checks", {})
    m = {f"chaos_kills_{k}": v for k, v in r.kills.items()}
    m.update(chaos_kills=sum(r.kills.values()), chaos_node_losses=r.node_losses, broker_pauses=r.broker_pauses,
             audited_events=checks.get("acked_events", {}).get("checked", 0),
             audited_sessions=checks.get("served", {}).get("checked", 0),
             audited_rewards=checks.get("rewards", {}).get("checked", 0),
             audited_users=checks.get("sequences", {}).get("checked", 0),
             audited_items=checks.get("catalog", {}).get("checked", 0),
             audit_violations=r.violations,
             node_loss_recovery_s=r.node_loss_recovery_s if r.node_loss_recovery_s is not None else -1)
    for k, v in r.rss_slope_mb_per_h.items():
        m[f"rss_slope_mb_per_h_{k}"] = v
    for k, v in r.rss_late_slope_mb_per_h.items():
        m[f"rss_late_slope_mb_per_h_{k}"] = v
    for k, (first, last) in r.rss_mb.items():
        m[f"rss_mb_end_{k}"] = last
    return m
