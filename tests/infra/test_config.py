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


def test_unknown_field_names_it_and_lists_the_allowed_ones(tmp_path):
    f = tmp_path / "g.yaml"
    f.write_text("consumer: {max_btach: 10}\n")
    with pytest.raises(ValueError, match=r"max_btach.*ConsumerConfig takes"):
        config.load(f, environ={})


def test_unknown_section_is_an_error(tmp_path):
    f = tmp_path / "g.yaml"
    f.write_text("kafak: {bootstrap: x:1}\n")
    with pytest.raises(ValueError, match="unknown config section 'kafak'"):
        config.load(f, environ={})


def test_invalid_value_is_rejected_by_the_dataclass(tmp_path):
    f = tmp_path / "g.yaml"
    f.write_text("consumer: {max_batch: 0}\n")
    with pytest.raises(ValueError, match="max_batch=0"):
        config.load(f, environ={})


def test_missing_explicit_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        config.load(tmp_path / "nope.yaml", environ={})


def test_every_section_names_a_frozen_dataclass():
    import dataclasses

    for section in config.SECTIONS:
        cls = config._config_class(section)
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen, section
