"""A generator version as bytes: safetensors weights and a JSON config, never pickle.

One version is two blobs. ``weights`` (safetensors) holds the generator's state dict under ``generator.``,
the MTP heads' under ``mtp.`` when the version has them, and the SID table ``catalog.item_sids`` [N, D] and
the tokenizer's bytes ``catalog.tokenizer`` [B] when the version carries its catalog. ``config`` (JSON)
holds the format tag, the generator's and the heads' configs, the item ids and the tokenizer version.

Invariant: decoding parses tensors and JSON only, so a model file cannot run code (safetensors' own
guarantee; ``torch.load`` of a pickle could). :func:`decode` refuses anything inconsistent with
:class:`CheckpointError`, whose message names the fix. Pure: bytes in, bytes out (the registry,
:mod:`actors.model_registry`, does the I/O).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import numpy as np
import torch
from safetensors.torch import save as st_save

from models.generator.model import GenerativeRecommender, GeneratorConfig
from models.generator.mtp import MTPConfig, MTPHeads
from models.serialization import plain_json, plain_state, read_tagged_json, read_tensors, section

FORMAT = "genrec-generator"
FORMAT_VERSION = 2


class CheckpointError(ValueError):
    """A model's bytes are corrupt, foreign or from an incompatible format version."""


@dataclass(frozen=True)
class GeneratorBundle:
    """A trained generator with what serving and evaluation need beside it.

    ``item_sids``: [N, D] int64 SIDs of ``item_ids`` (empty when the catalog comes from elsewhere, e.g. the
    item indexer); ``tokenizer``: the tokenizer's own bytes (:meth:`models.sid.tokenizer` ``to_bytes``).
    """

    model: GenerativeRecommender
    mtp_heads: MTPHeads | None = None
    item_ids: tuple[str, ...] = ()
    item_sids: np.ndarray | None = None   # [N, D]
    tokenizer_version: str = ""
    tokenizer: bytes = b""

    @property
    def level_sizes(self) -> tuple[int, ...]:
        return tuple(self.model.cfg.level_sizes)


def encode(bundle: GeneratorBundle) -> tuple[bytes, bytes]:
    """``(weights, config)``: the safetensors blob and the UTF-8 JSON config of ``bundle``."""
    tensors = plain_state("generator", bundle.model)
    if bundle.mtp_heads is not None:
        tensors.update(plain_state("mtp", bundle.mtp_heads))
    sids = np.zeros((0, bundle.model.cfg.sid_len), np.int64) if bundle.item_sids is None else bundle.item_sids
    sids = np.ascontiguousarray(sids, dtype=np.int64)
    if sids.ndim != 2 or sids.shape[0] != len(bundle.item_ids) or (len(sids) and sids.shape[1] != bundle.model.cfg.sid_len):
        raise CheckpointError(f"item_sids shape {sids.shape} does not match {len(bundle.item_ids)} items x "
                              f"D={bundle.model.cfg.sid_len}")
    tensors["catalog.item_sids"] = torch.from_numpy(sids.copy())
    tensors["catalog.tokenizer"] = torch.frombuffer(bytearray(bundle.tokenizer), dtype=torch.uint8).clone() \
        if bundle.tokenizer else torch.zeros(0, dtype=torch.uint8)
    config = {"format": FORMAT, "format_version": FORMAT_VERSION,
              "generator": bundle.model.cfg.to_dict(),
              "mtp": None if bundle.mtp_heads is None else plain_json(dataclasses.asdict(bundle.mtp_heads.cfg)),
              "item_ids": [str(i) for i in bundle.item_ids],
              "tokenizer_version": str(bundle.tokenizer_version)}
    return st_save(tensors), json.dumps(config, sort_keys=True).encode()


def read_config(config: bytes) -> dict:
    """The JSON config of a version, checked for format and format version."""
    return read_tagged_json(config, FORMAT, FORMAT_VERSION, CheckpointError, "generator",
                            "retrain with `genrec train` and republish the version")


def decode(weights: bytes, config: bytes, device: str | torch.device = "cpu") -> GeneratorBundle:
    """The :class:`GeneratorBundle` of ``encode``'s blobs, in eval mode on ``device``."""
    cfg = read_config(config)
    tensors = read_tensors(weights, CheckpointError, "generator", "republish the version")
    try:
        gen_cfg = GeneratorConfig.from_dict(cfg["generator"])
        model = GenerativeRecommender(gen_cfg)
        model.load_state_dict(section(tensors, "generator"))
        heads = None
        if cfg.get("mtp"):
            heads = MTPHeads(MTPConfig(**cfg["mtp"]))
            heads.load_state_dict(section(tensors, "mtp"))
            heads = heads.to(device).eval()
        item_ids = tuple(str(i) for i in cfg.get("item_ids", ()))
        sids = tensors["catalog.item_sids"].numpy().astype(np.int64)
        if sids.shape != (len(item_ids), gen_cfg.sid_len) and not (len(item_ids) == 0 and len(sids) == 0):
            raise ValueError(f"item_sids shape {sids.shape} does not match {len(item_ids)} items x D={gen_cfg.sid_len}")
        tokenizer = bytes(tensors["catalog.tokenizer"].numpy().tobytes())
    except (KeyError, ValueError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"weights and config do not fit together ({type(e).__name__}: {str(e)[:300]}); "
                              "republish the version") from None
    return GeneratorBundle(model.to(device).eval(), heads, item_ids, sids if len(item_ids) else None,
                           str(cfg.get("tokenizer_version", "")), tokenizer)
