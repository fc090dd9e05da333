"""A reward model as bytes: safetensors weights and a JSON config, never pickle (the generator's pattern,
:mod:`models.generator.checkpoint`).

``weights`` holds the model's state dict under ``reward_model.`` (the SID table ``item_sids`` [N, D]
and the item lengths ``item_minutes`` [N] included; a file without lengths loads with none known); ``config`` (JSON) holds the format tag, the :class:`RewardModelConfig` and free metadata (data
window, metrics). Invariant: decoding parses tensors and JSON only, so a model file cannot run code; any
inconsistency raises :class:`RewardCheckpointError` naming the fix. Pure: bytes in, bytes out.
"""

from __future__ import annotations

import json

import torch
from safetensors.torch import save as st_save

from models.reward_model.model import RewardModel, RewardModelConfig
from models.serialization import plain_json, plain_state, read_tagged_json, read_tensors, section

FORMAT = "genrec-reward-model"
FORMAT_VERSION = 1
_PREFIX = "reward_model"


class RewardCheckpointError(ValueError):
    """A reward model's bytes are corrupt, foreign or from an incompatible format version."""


def encode(model: RewardModel, metadata: dict | None = None) -> tuple[bytes, bytes]:
    """``(weights, config)``: the safetensors blob and the UTF-8 JSON config of ``model``."""
    tensors = plain_state(_PREFIX, model)
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": model.cfg.to_dict(),
              "metadata": plain_json(metadata or {})}
    return st_save(tensors), json.dumps(config, sort_keys=True).encode()


def read_config(config: bytes) -> dict:
    """The JSON config, checked for format and version."""
    return read_tagged_json(config, FORMAT, FORMAT_VERSION, RewardCheckpointError, "reward model",
                            "retrain the reward model and save it again")


def decode(weights: bytes, config: bytes, device: str | torch.device = "cpu") -> tuple[RewardModel, dict]:
    """``(model in eval mode on device, metadata)`` of :func:`encode`'s blobs."""
    cfg = read_config(config)
    tensors = read_tensors(weights, RewardCheckpointError, "reward model", "save the model again")
    try:
        model_cfg = RewardModelConfig.from_dict(cfg["model"])
        state = section(tensors, _PREFIX)
        state.setdefault("item_minutes", torch.zeros(0))   # saved before item lengths existed: none known
        model = RewardModel(model_cfg, state.get("item_sids"), state["item_minutes"])
        model.load_state_dict(state)
    except (KeyError, ValueError, RuntimeError, TypeError) as e:
        raise RewardCheckpointError(f"reward model weights and config do not fit together ({type(e).__name__}: "
                                    f"{str(e)[:300]}); save the model again") from None
    return model.to(device).eval(), dict(cfg.get("metadata") or {})
