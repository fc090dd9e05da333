"""config_from_dict: known keys build the config, an unknown key is an error naming it and the known ones."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from models.config_fields import config_from_dict


@dataclass(frozen=True)
class Cfg:
    a: int = 1
    b: str = "x"


def test_known_keys_build_the_config_and_none_gives_the_defaults():
    assert config_from_dict(Cfg, {"a": 3}, "Cfg fields") == Cfg(a=3)
    assert config_from_dict(Cfg, None, "Cfg fields") == Cfg()


def test_an_unknown_key_names_itself_and_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown Cfg fields \['c'\]; known: \['a', 'b'\]"):
        config_from_dict(Cfg, {"a": 3, "c": 0}, "Cfg fields")
