"""`genrec align`: help, bad arguments named with their fix, and one quick run through the whole command
(a real registry and archive; too few rewards refuse the round: exit 2, nothing published)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest


def _run(capsys, *argv) -> tuple[int, str, str]:
    from infra.cli import main

    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as e:
        _run(capsys, "align", "--help")
    out = capsys.readouterr().out
    assert e.value.code == 0
    for flag in ("--parent", "--version", "--mode", "--archive", "--registry", "--experiment", "--arm",
                 "--experiments-file", "--every", "--ray-workers", "--json", "--window-days"):
        assert flag in out


@pytest.mark.parametrize("argv, needle", [
    (["--every", "soon"], "positive number"),
    (["--experiment", "align-ab", "--experiments-file", "x.yaml"], "go together"),
    (["--window-days", "-1"], "window_days"),
    (["--ray-workers", "-2"], "ray_workers"),
])
def test_bad_arguments_are_refused_with_the_fix(capsys, argv, needle):
    rc, _, err = _run(capsys, "align", *argv)
    assert rc == 2 and needle in err


def test_unknown_mode_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as e:
        _run(capsys, "align", "--mode", "vibes")
    assert e.value.code == 2


def _tiny_registry(path) -> str:
    from actors.model_registry import ModelRegistry
    from models.generator.checkpoint import GeneratorBundle
    from models.generator.model import GenerativeRecommender, GeneratorConfig

    cfg = GeneratorConfig(level_sizes=(4, 4, 2), d_model=16, heads=2, enc_layers=1, dec_layers=1, max_history=8,
                          session_len=2)
    sids = np.array([[a, b, 0] for a in range(4) for b in range(4)], dtype=np.int64)     # 16 items
    reg = ModelRegistry(str(path))
    reg.publish("v1", GeneratorBundle(GenerativeRecommender(cfg), None, tuple(f"i{k}" for k in range(16)), sids))
    reg.promote("v1", require_verdict=False)
    return reg.uri


def _tiny_archive(root) -> str:
    from ingest.archive import file_name, topic_dir
    from ingest.arrow_schemas import to_table
    from ingest.contract import REWARDS, SERVED, USER_EVENTS, Reward, Served, UserEvent

    ev = [UserEvent(event_id=f"e{k}", user_id=f"u{k % 5}", item_id=f"i{k % 16}", type="click", ts=1000 + k)
          for k in range(60)]
    served = [Served(request_id=f"r{k}", user_id=f"u{k}", ts=2000 + k, model_version="v1", experiment="", arm="",
                     items=["i1", "i2"], sids=[[], []], scores=[0.0, 0.0]) for k in range(3)]
    rewards = [Reward(request_id=f"r{k}", user_id=f"u{k}", experiment="", arm="", model_version="v1",
                      components={"impressions": 2.0, "clicks": 1.0}, reward=1.0, window_closed_ts=2100, ts=2000 + k)
               for k in range(3)]
    for topic, recs in ((USER_EVENTS, ev), (SERVED, served), (REWARDS, rewards)):
        d = topic_dir(root, topic) / "date=2026-01-01"
        d.mkdir(parents=True)
        pq.write_table(to_table(recs, topic, [0] * len(recs), range(len(recs))), d / file_name(0, 0, len(recs), 0, 1))
    return str(root)


def test_a_run_with_too_few_rewards_is_refused_and_publishes_nothing(tmp_path, capsys):
    from actors.model_registry import ModelRegistry

    reg = _tiny_registry(tmp_path / "registry")
    archive = _tiny_archive(tmp_path / "archive")
    rc, out, err = _run(capsys, "align", "--registry", reg, "--archive", archive, "--window-days", "0",
                        "--version", "c1", "--world", "none", "--json")
    assert rc == 2, (out, err)
    res = json.loads(out)
    assert res["parent"] == "v1" and res["version"] == "c1" and not res["passed"]
    assert "min_examples" in res["refused"] and res["window"]["served"] == 3 and res["split"]["users"] == 5
    assert [v.version for v in ModelRegistry(reg).versions()] == ["v1"]
    # no archive at that path: a clear error, not a traceback
    rc, _, err = _run(capsys, "align", "--registry", reg, "--archive", str(tmp_path / "nope"), "--world", "none")
    assert rc == 2 and "is not a directory" in err
    # an empty registry: no parent to align
    rc, _, err = _run(capsys, "align", "--registry", str(tmp_path / "empty"), "--archive", archive)
    assert rc == 2 and "no promoted version" in err
