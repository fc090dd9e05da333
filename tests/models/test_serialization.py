"""The shared model-file helpers: JSON-plain metadata, tagged configs, safetensors reading."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save as st_save

from models.serialization import plain_json, plain_state, read_tagged_json, read_tensors, section


class Bad(ValueError):
    pass


def test_plain_json_makes_numpy_and_objects_json_ready():
    out = plain_json({"a": np.float32(1.5), 2: (np.int64(3), None), "p": object})
    assert json.loads(json.dumps(out)) == out
    assert out["a"] == 1.5 and out["2"] == [3, None] and isinstance(out["p"], str)


def test_tagged_json_refuses_foreign_and_old_configs_naming_the_fix():
    good = json.dumps({"format": "f", "format_version": 2, "x": 1}).encode()
    assert read_tagged_json(good, "f", 2, Bad, "thing", "do X")["x"] == 1
    with pytest.raises(Bad, match="not JSON.*do X"):
        read_tagged_json(b"\xff{", "f", 2, Bad, "thing", "do X")
    with pytest.raises(Bad, match="not a genrec thing config"):
        read_tagged_json(json.dumps({"format": "g"}).encode(), "f", 2, Bad, "thing", "do X")
    with pytest.raises(Bad, match="format_version 1: this code reads 2; do X"):
        read_tagged_json(json.dumps({"format": "f", "format_version": 1}).encode(), "f", 2, Bad, "thing", "do X")


def test_state_round_trips_through_safetensors_by_prefix():
    m = torch.nn.Linear(3, 2)
    blob = st_save({**plain_state("a", m), "b.w": torch.ones(1)})
    back = section(read_tensors(blob, Bad, "thing", "fix"), "a")
    assert set(back) == {"weight", "bias"} and torch.equal(back["weight"], m.weight.detach())
    with pytest.raises(Bad, match="not a valid safetensors file.*fix"):
        read_tensors(b"garbage", Bad, "thing", "fix")
