"""The Serve config file and `genrec serve` arguments build valid app configs (no Ray needed)."""

from __future__ import annotations

import pytest

from infra.commands.serve import DEFAULT_CONFIG, load_serve_config
from serving.serve_args import configs_from_args


def test_serve_config_file_builds_valid_configs(monkeypatch):
    http, args = load_serve_config(DEFAULT_CONFIG)
    assert http["host"] == "127.0.0.1"  # loopback by default
    monkeypatch.setenv("KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    settings, rec = configs_from_args(args)
    assert [m.version for m in rec.models] == ["v1", "v2"]
    assert rec.max_ongoing_requests == 2 * rec.max_batch_size  # sized with the batch
    # no GPU here: the CPU default rows, continuous batching, as many admitted per replica as rows decode
    assert (rec.max_batch_size, settings.max_inflight, rec.continuous_batching) == (4, 4, True)
    assert rec.batching == "process"
    # static batches (continuous batching off, or the split topology): two batches admitted, one decoding
    static, static_rec = configs_from_args({**args, "continuous_batching": False})
    assert static.max_inflight == 8 and not static_rec.continuous_batching
    split, _ = configs_from_args({**args, "topology": "split"})
    assert split.max_inflight == 8
    assert settings.experiments.endswith("infra/experiments.yaml")
    from serving.experiments import ExperimentsConfig

    assert [e.name for e in ExperimentsConfig.from_yaml(settings.experiments).experiments()] == ["decode-ab"]


@pytest.mark.parametrize("args,needle", [
    ({"bootstrap": "h:1", "bogus": 1}, "unknown serve arguments"),
    ({}, "no Kafka bootstrap"),
    ({"bootstrap": "h:1", "models": [{"path": "x"}]}, "version"),
    ({"bootstrap": "h:1", "history": "shards"}, "shard_names"),
    ({"bootstrap": "h:1", "max_batch_size": 0}, "max_batch_size"),
    ({"bootstrap": "h:1", "admin_token": "short"}, "admin_token"),
])
def test_bad_serve_arguments_name_the_problem(monkeypatch, args, needle):
    monkeypatch.delenv("KAFKA_BOOTSTRAP", raising=False)
    with pytest.raises(ValueError, match=needle):
        configs_from_args(args)


def test_genrec_serve_is_a_command():
    from infra.cli import build_parser

    args = build_parser().parse_args(["serve", "--port", "0", "--model", "v1=/tmp/m.pt"])
    assert args.command == "serve" and args.model == ["v1=/tmp/m.pt"]
