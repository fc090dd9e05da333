"""The house format of a model file: safetensors weights and a tagged JSON config, never pickle.

Every model the product stores (the generator, :mod:`models.generator.checkpoint`; the session reward
model, :mod:`models.reward_model.checkpoint`) is two blobs: a safetensors file of named tensors (each
module's state under a prefix) and a UTF-8 JSON config carrying ``format`` and ``format_version`` tags.
These helpers hold what every such format shares. Invariant: reading parses tensors and JSON only, so a
model file cannot run code; a bad blob raises the caller's error class with a message naming the fix.
Pure: bytes in, bytes out.
"""

from __future__ import annotations

import json

import numpy as np
import torch
from safetensors.torch import load as st_load


def plain_json(x):
    """``x`` as JSON-ready values: mappings and sequences recursively, numpy scalars as Python numbers, any
    other object as its ``str`` (model metadata: configs, metrics, data windows, verdicts)."""
    if isinstance(x, dict):
        return {str(k): plain_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain_json(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, (int, float, str, bool)) or x is None:
        return x
    return str(x)


def plain_state(prefix: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s state dict under ``prefix.``, each tensor a contiguous CPU copy."""
    # safetensors refuses tensors that share storage (tied weights): each gets its own contiguous copy
    return {f"{prefix}.{k}": v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}


def section(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors saved under ``prefix.``, with the prefix taken off (a module's state dict)."""
    p = prefix + "."
    return {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}


def read_tagged_json(config: bytes, fmt: str, fmt_version: int, error: type[Exception], what: str,
                     fix: str) -> dict:
    """The JSON config ``config``, checked to carry ``format == fmt`` and ``format_version == fmt_version``.

    ``what`` names the model in messages ("generator", "reward model"); ``fix`` says how to get a good file.
    """
    try:
        cfg = json.loads(config.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{what} config is not JSON ({e}); {fix}") from None
    if not isinstance(cfg, dict) or cfg.get("format") != fmt:
        got = cfg.get("format") if isinstance(cfg, dict) else type(cfg).__name__
        raise error(f"not a genrec {what} config (format {got!r}); pass the config saved beside these weights")
    if cfg.get("format_version") != fmt_version:
        raise error(f"{what} format_version {cfg.get('format_version')}: this code reads {fmt_version}; {fix} "
                    "or use a matching genrec version")
    return cfg


def read_tensors(weights: bytes, error: type[Exception], what: str, fix: str) -> dict[str, torch.Tensor]:
    """The named tensors of a safetensors blob; anything else raises ``error``."""
    try:
        return st_load(weights)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for bad headers
        raise error(f"{what} weights are not a valid safetensors file ({type(e).__name__}: {str(e)[:200]}); "
                    f"{fix}") from None
