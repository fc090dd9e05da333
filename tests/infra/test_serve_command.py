"""The Serve config file, genrec.yaml and `genrec serve` flags build valid app configs (no Ray needed)."""

from __future__ import annotations

import argparse

import pytest

from infra.commands.serve import DEFAULT_CONFIG, app_args_from, broker_given, load_serve_config
from serving.application import AppArgs, load_configs, resolve_defaults


@pytest.fixture(scope="module", autouse=True)
def registry(tmp_path_factory):
    """A model registry with two published versions, v2 promoted: what genrec.yaml's defaults serve."""
    import numpy as np
    import torch

    from actors.model_registry import ModelRegistry
    from models.generator.checkpoint import GeneratorBundle
    from models.generator.model import GenerativeRecommender, GeneratorConfig

    reg = ModelRegistry(str(tmp_path_factory.mktemp("registry")))
    for v in ("v1", "v2"):
        torch.manual_seed(0)
        # levels other than genrec.yaml's seeded default, with the catalog, as `genrec train` publishes
        reg.publish(v, GeneratorBundle(GenerativeRecommender(GeneratorConfig(level_sizes=(8, 8, 4), d_model=16)),
                                       item_ids=("i0", "i1", "i2"), item_sids=np.array([[0, 0, 0], [1, 2, 3], [7, 7, 0]])))
    reg.promote("v2", require_verdict=False)
    return reg


def _configs(args: dict, environ: dict | None = None, registry: str | None = None):
    env = {"GENREC_RECOMMENDER__REGISTRY": registry or REGISTRY[0], **(environ or {})}
    return resolve_defaults(*load_configs(AppArgs.model_validate(args), env))


REGISTRY: list[str] = []


@pytest.fixture(autouse=True)
def _registry_uri(registry):
    REGISTRY[:] = [registry.uri]


def test_serve_config_file_builds_valid_configs():
    http, args = load_serve_config(DEFAULT_CONFIG)
    assert http["host"] == "127.0.0.1"  # loopback by default
    settings, rec = _configs(args)
    assert [(m.version, m.registry) for m in rec.models] == [("v2", REGISTRY[0])]   # the promoted version
    assert rec.max_ongoing_requests == 2 * rec.max_batch_size  # a recommender replica: the rows and as many waiting
    # no GPU here: the CPU default rows, as many admitted per ingress replica as rows decode
    assert (rec.max_batch_size, settings.max_inflight) == (4, 4)
    split, split_rec = _configs({**args, "serving": {"topology": "split"}, "recommender": {"num_replicas": 2}})
    assert split.topology == "split" and split.max_inflight == 8   # the rows of both recommender replicas
    assert settings.experiments.endswith("infra/experiments.yaml")
    assert settings.decode.mode == "greedy"
    from serving.experiments.config import ExperimentsConfig

    assert [e.name for e in ExperimentsConfig.from_yaml(settings.experiments).experiments()] == ["decode-ab"]


def test_environment_overrides_the_sections_and_args_override_the_environment():
    settings, rec = _configs({"recommender": {"max_batch_size": 6}},
                             {"GENREC_SERVING__TOPOLOGY": "split", "GENREC_RECOMMENDER__MAX_BATCH_SIZE": "2",
                              "KAFKA_BOOTSTRAP": "h:1", "GENREC_DECODE__BEAM_WIDTH": "3"})
    assert settings.topology == "split" and rec.max_batch_size == 6
    assert settings.kafka.bootstrap == rec.kafka.bootstrap == "h:1" and settings.decode.beam_width == 3


@pytest.mark.parametrize("args,needle", [
    ({"serving": {"bogus": 1}}, r"unknown field\(s\) \['bogus'\]; AppSettings takes"),
    ({"bogus": {}}, "Extra inputs are not permitted"),
    ({"recommender": {"models": [{"path": "x"}]}}, "not loaded from paths"),
    ({"recommender": {"models": [{"seed": 1}]}}, "version"),
    ({"recommender": {"history": "shards"}}, "shard_names"),
    ({"recommender": {"history_timeout_s": 0}}, "history_timeout_s"),
    ({"recommender": {"max_batch_size": 0}}, "max_batch_size"),
    ({"serving": {"admin_token": "short"}}, "admin_token"),
    ({"serving": {"kafka": {"bootstrap": "h:1"}}}, "set them there"),
    ({"decode": {"mode": "nope"}}, "decode mode 'nope' is unknown"),
    ({"serving": {"topology": "both"}}, "topology"),
    ({"serving": {"max_body_bytes": 10}}, "max_body_bytes"),
    ({"serving": {"max_batch_records": 5000}}, "max_batch_records"),
    ({"serving": {"rate_limit_per_s": 0}}, "rate_limit_per_s"),
])
def test_bad_serve_arguments_name_the_problem(args, needle):
    with pytest.raises(Exception, match=needle):
        _configs(args)


def test_flags_override_the_serve_config_args(tmp_path):
    from infra.cli import build_parser

    token = tmp_path / "admin-token"
    token.write_text("a" * 16 + "\n")
    ns = build_parser().parse_args(["serve", "--port", "0", "--model", "v1", "--topology", "split",
                                    "--bootstrap", "h:2", "--admin-token-file", str(token),
                                    "--registry", REGISTRY[0]])
    assert ns.command == "serve" and ns.model == ["v1"]
    args = app_args_from(ns, {"serving": {"topology": "colocated"}})
    assert args["serving"] == {"topology": "split", "admin_token_file": str(token)}
    assert _configs(args)[0].admin_secret() == "a" * 16
    assert args["recommender"] == {"registry": REGISTRY[0], "models": [{"version": "v1"}]}
    assert broker_given(args, environ={}) and not broker_given({}, environ={})
    settings, rec = _configs(args)
    assert settings.kafka.bootstrap == "h:2" and [(m.version, m.registry) for m in rec.models] == [("v1", REGISTRY[0])]
    with pytest.raises(ValueError, match="not served by path"):
        app_args_from(argparse.Namespace(**{**vars(ns), "model": ["v1=/tmp/m.pt"]}), {})


def test_an_empty_registry_says_how_to_create_a_version(tmp_path):
    with pytest.raises(ValueError, match="no promoted version: train one with `genrec train --registry"):
        _configs({}, registry=str(tmp_path / "empty"))


def test_admin_token_on_the_command_line_is_refused_with_the_alternatives(capsys):
    from infra.cli import main

    assert main(["serve", "--admin-token", "a" * 32]) == 2
    err = capsys.readouterr().err
    assert "GENREC_SERVING__ADMIN_TOKEN" in err and "--admin-token-file" in err and "a" * 32 not in err


def test_admin_token_comes_from_the_environment_or_a_file(tmp_path):
    settings, _ = _configs({}, {"GENREC_SERVING__ADMIN_TOKEN": "e" * 20})
    assert settings.admin_secret() == "e" * 20 and "e" * 20 not in repr(settings)
    short = tmp_path / "short"
    short.write_text("abc")
    settings, _ = _configs({"serving": {"admin_token_file": str(short)}})
    with pytest.raises(ValueError, match="fewer than 16"):
        settings.admin_secret()
    with pytest.raises(FileNotFoundError, match="admin_token_file"):
        _configs({"serving": {"admin_token_file": str(tmp_path / "missing")}})[0].admin_secret()
    with pytest.raises(ValueError, match="not both"):
        _configs({"serving": {"admin_token_file": str(short)}}, {"GENREC_SERVING__ADMIN_TOKEN": "e" * 20})
    assert _configs({})[0].admin_secret() is None


def test_genrec_serve_starts_on_a_fresh_broker_and_prints_its_stages(tmp_path):
    """The real command on an empty embedded broker (a fresh clone): ready well before the feeds' time-outs
    (they waited 2 x 60 s for topics the ingress had not created yet), each stage printed with its time."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    from infra.broker import free_port

    repo = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GENREC_", "KAFKA_BOOTSTRAP", "RAY_ADDRESS"))}
    out = subprocess.run([sys.executable, "-m", "infra.cli", "serve", "--port", str(free_port()),
                          "--registry", REGISTRY[0], "--for-seconds", "1"],
                         cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    for stage in ("embedded Kafka broker", "Ray (local)", "config and imports", "Serve controller",
                  "deploy: ingress replica start-up", "recommender: models v2 on cpu",
                  "recommender: catalog and history feeds caught up"):
        assert re.search(rf"{re.escape(stage)}.*: \d+\.\d s", text), (stage, text)
    ready = float(re.search(r"genrec API ready in (\d+\.\d) s", text).group(1))
    assert ready < 100, text   # 30 s on an idle 2-core machine; the bound leaves room for a busy one
    assert f"serving models v2 (registry {REGISTRY[0]})" in text and "serve stopped" in text


def test_the_app_builder_is_typed_for_serve():
    """Serve validates a builder's ``args`` into the pydantic model its one parameter is annotated with
    (a class, not a string: serving/application.py has no ``from __future__ import annotations``)."""
    import inspect

    from serving.application import app_builder

    (param,) = inspect.signature(app_builder).parameters.values()
    assert param.annotation is AppArgs
