"""Training through Ray Train: one per-worker loop, one worker here, data-parallel workers on a cluster.

:func:`run_ray_training` is the generic part every trainer of genrec shares (the aligner's DPO rounds,
:mod:`actors.aligner`, and ``genrec train``'s generator, :mod:`actors.train_job`): it starts Ray Train's
``TorchTrainer`` with ``RayTrainConfig.num_workers`` workers (``ScalingConfig``; a GPU each with
``use_gpu``), sends every worker the model's state, runs the caller's ``worker_fn`` on each, and brings
the trained state back from **rank 0's checkpoint, a safetensors file** (tensors only: nothing that comes
back from a worker can run code here), with rank 0's final metrics. The same code runs one worker on
this machine and N GPU workers on a Ray cluster (``ray_cluster.yaml``; ``RAY_ADDRESS`` picks the cluster).

Invariants:

* every worker builds the model from the same state, so data-parallel replicas start equal;
  :meth:`Worker.wrap` wraps it in DDP (``ray.train.torch.prepare_model``) only when there is more than one
  worker, so a one-worker run trains the plain module — the same arithmetic as in-process training;
* every worker calls ``ray.train.report`` the same number of times (:meth:`Worker.report` for progress,
  once more at the end); only rank 0's final report carries a checkpoint;
* Ray Train's run folder (``storage_path``) is a temporary folder removed afterwards unless configured.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

import torch

STATE_FILE = "model.safetensors"
_RESULT_KEY = "genrec_result"      # rank 0's final metrics, JSON-encoded (independent of how Ray flattens dicts)


class RayTrainError(RuntimeError):
    """A Ray Train run that ended without rank 0's trained weights; the message says where to look."""


@dataclass(frozen=True)
class RayTrainConfig:
    """How training runs through Ray Train: ``num_workers`` data-parallel workers (``TorchTrainer``), each
    with a GPU when ``use_gpu`` and ``cpus_per_worker`` CPUs; ``storage_path`` keeps Ray Train's run folder
    (default: a temporary folder removed after the run)."""

    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: int = 1
    storage_path: str = ""

    def __post_init__(self) -> None:
        for name in ("num_workers", "cpus_per_worker"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r} must be an int >= 1 (train in-process instead of "
                                 "num_workers=0: pass no RayTrainConfig)")
        if not isinstance(self.use_gpu, bool):
            raise ValueError(f"use_gpu={self.use_gpu!r} must be true or false")


@dataclass(frozen=True)
class Worker:
    """This worker's place in the run, handed to ``worker_fn``: ``rank`` of ``world_size``, its ``device``."""

    rank: int
    world_size: int
    device: torch.device

    def wrap(self, module: torch.nn.Module, *, find_unused_parameters: bool = False) -> torch.nn.Module:
        """``module`` on this worker's device, DDP-wrapped when ``world_size`` > 1 (gradients are averaged
        across workers inside ``backward``, through the wrapper's ``forward`` only)."""
        import ray.train.torch

        return ray.train.torch.prepare_model(module, parallel_strategy="ddp", parallel_strategy_kwargs={
            "find_unused_parameters": find_unused_parameters})

    def all_max(self, values: list[float]) -> list[float]:
        """The element-wise maximum of ``values`` over all workers (a collective: every worker must call it
        the same number of times). Used to agree on a stop decision (max of 0/1 flags) or a shared value."""
        if self.world_size == 1:
            return [float(v) for v in values]
        import torch.distributed as dist

        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [float(v) for v in t.cpu()]

    def report(self, metrics: dict) -> None:
        """Progress metrics to Ray Train (call it on every worker, the same number of times)."""
        import ray.train

        ray.train.report({k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))})


@dataclass
class RayTrainResult:
    """What a run gives back: rank 0's trained ``state`` (tensors) and its final ``metrics``."""

    state: dict[str, torch.Tensor]
    metrics: dict
    train_s: float = 0.0


# worker_fn(worker, model, payload) -> metrics: trains ``model`` (already on the worker's device) in place;
# rank 0's model state after it returns is what comes back.
WorkerFn = Callable[[Worker, torch.nn.Module, dict], dict]


def _train_loop_per_worker(config: dict) -> None:
    """Ray Train's ``train_loop_per_worker``: build the model from the state, run ``worker_fn``, and report
    (rank 0 with its weights as a safetensors checkpoint)."""
    import ray.train
    import ray.train.torch
    from safetensors.torch import save_file

    ctx = ray.train.get_context()
    worker = Worker(ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device())
    model = config["factory"]()
    model.load_state_dict(config["state"])
    model.to(worker.device)
    metrics = config["worker_fn"](worker, model, config["payload"]) or {}
    final = {_RESULT_KEY: json.dumps(metrics, default=float), "rank": worker.rank}
    if worker.rank == 0:
        d = tempfile.mkdtemp(prefix="genrec-ray-train-")
        try:
            save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                      os.path.join(d, STATE_FILE))
            ray.train.report(final, checkpoint=ray.train.Checkpoint.from_directory(d))
        finally:
            shutil.rmtree(d, ignore_errors=True)
    else:
        ray.train.report(final)


def run_ray_training(worker_fn: WorkerFn, factory: Callable[[], torch.nn.Module], model: torch.nn.Module,
                     payload: dict, cfg: RayTrainConfig, *, name: str = "train") -> RayTrainResult:
    """Train ``model`` with ``worker_fn`` on ``cfg.num_workers`` Ray Train workers; returns rank 0's state.

    ``factory()`` builds an untrained module of ``model``'s architecture on a worker (a picklable callable,
    e.g. ``functools.partial(GenerativeRecommender, cfg)``); ``model``'s state is loaded into it.
    ``worker_fn`` and ``payload`` travel to the workers (module-level function; plain data). Starts a
    local Ray when none is running (and stops it afterwards); ``RAY_ADDRESS`` selects a cluster.
    """
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from safetensors.torch import load_file

    started = not ray.is_initialized()
    if started:
        ray.init(include_dashboard=False, configure_logging=False)
    storage = cfg.storage_path or tempfile.mkdtemp(prefix="genrec-ray-train-")
    t0 = time.time()
    try:
        trainer = TorchTrainer(
            _train_loop_per_worker,
            train_loop_config={"worker_fn": worker_fn, "factory": factory, "payload": payload,
                               "state": {k: v.detach().cpu() for k, v in model.state_dict().items()}},
            scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                         resources_per_worker={"CPU": cfg.cpus_per_worker}),
            run_config=RunConfig(storage_path=os.path.abspath(storage),
                                 name=f"{name}-{int(time.time() * 1000)}"))
        result = trainer.fit()
        if result.checkpoint is None:
            raise RayTrainError("Ray Train finished without rank 0's checkpoint; see the worker logs "
                                f"(Ray Train run folder {storage})")
        with result.checkpoint.as_directory() as d:
            state = load_file(os.path.join(d, STATE_FILE))
        raw = (result.metrics or {}).get(_RESULT_KEY)
        metrics = json.loads(raw) if isinstance(raw, str) else {}
        return RayTrainResult(state, metrics, time.time() - t0)
    finally:
        if not cfg.storage_path:
            shutil.rmtree(storage, ignore_errors=True)
        if started:
            ray.shutdown()
