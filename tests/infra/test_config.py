"""genrec.yaml loading: file + environment overrides, clear errors for typos."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra import config
from ingest.consumer_loop import ConsumerConfig
from ingest.kafka_client import KafkaConfig

REPO = Path(__file__).resolve().parents[2]


def test_repo_genrec_yaml_builds_every_section():
    cfgs = config.load(REPO / "genrec.yaml", environ={})
    assert isinstance(cfgs["kafka"], KafkaConfig) and cfgs["kafka"].bootstrap == "127.0.0.1:9092"
    assert isinstance(cfgs["consumer"], ConsumerConfig) and cfgs["consumer"].max_batch == 5000


def test_environment_overrides_keep_types(tmp_path):
    f = tmp_path / "g.yaml"
    f.write_text("consumer: {max_batch: 10}\n")
    cfgs = config.load(f, environ={"GENREC_CONSUMER__MAX_BATCH": "77", "KAFKA_BOOTSTRAP": "h:1"},
                       required=("kafka",))
    assert cfgs["consumer"].max_batch == 77
    assert cfgs["kafka"].bootstrap == "h:1"


@pytest.mark.parametrize("text,needle", [
    ("consumer: {max_btach: 10}\n", r"max_btach.*ConsumerConfig takes"),            # a typo names the allowed fields
    ("kafak: {bootstrap: x:1}\n", "unknown config section 'kafak'"),
    ("consumer: {max_batch: 0}\n", "max_batch=0"),                                  # the dataclass validates
    ("serving: {decode: {mode: beam}}\n", r"'serving': \['decode'\] come from their own section.*set them there"),
], ids=["unknown-field", "unknown-section", "invalid-value", "linked-field"])
def test_config_errors_name_the_problem(tmp_path, text, needle):
    f = tmp_path / "g.yaml"
    f.write_text(text)
    with pytest.raises(ValueError, match=needle):
        config.load(f, environ={})


def test_missing_explicit_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        config.load(tmp_path / "nope.yaml", environ={})


def test_every_section_names_a_frozen_dataclass():
    import dataclasses

    for section in config.SECTIONS:
        cls = config._config_class(section)
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen, section


def test_serving_sections_get_the_kafka_and_decode_sections(tmp_path):
    f = tmp_path / "g.yaml"
    f.write_text("kafka: {bootstrap: h:1}\nrecommender: {models: [{version: v1, seed: 1, config: {d_model: 8}}]}\n"
                 "decode: {mode: beam}\n")
    cfgs = config.load(f, environ={"GENREC_SERVING__MAX_K": "7"}, required=("serving",))
    assert cfgs["serving"].kafka is cfgs["kafka"] is cfgs["recommender"].kafka
    assert cfgs["serving"].decode.mode == "beam" and cfgs["serving"].max_k == 7
    assert cfgs["recommender"].models[0].config["level_sizes"] == (16, 16, 8)   # the section's level_sizes


def test_only_builds_the_named_sections_and_explicit_overrides_win(tmp_path):
    f = tmp_path / "g.yaml"
    f.write_text("consumer: {max_batch: 10}\ndecode: {mode: beam}\n")
    cfgs = config.load(f, environ={"GENREC_DECODE__MODE": "greedy"}, only=("decode",),
                       overrides={"decode": {"beam_width": 2}})
    assert set(cfgs) == {"decode"} and (cfgs["decode"].mode, cfgs["decode"].beam_width) == ("greedy", 2)
