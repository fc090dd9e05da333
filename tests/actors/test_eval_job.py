"""The offline evaluation job end to end on real files: CSV, SASRec text, Parquet archive, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from actors.eval_job import EvalConfig, load_log, run_eval, write_json

REPO = Path(__file__).resolve().parents[2]
N_ITEMS = 90


def _walks(n_users=60, length=9, seed=0):
    """Users walk item cycles with stride 1: a sequential pattern SASRec can learn, popularity cannot."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        start = int(rng.integers(N_ITEMS))
        for t in range(length):
            rows.append((f"u{u}", f"m{(start + t) % N_ITEMS}", 1_700_000_000 + 3600 * t + u))
    return rows


@pytest.fixture
def csv_file(tmp_path):
    p = tmp_path / "interactions.csv"
    p.write_text("user,item,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in _walks()))
    return p


def test_comparison_on_an_interactions_file(csv_file, tmp_path):
    cfg = EvalConfig(dataset=str(csv_file), embeddings="collab", levels=2, codebook_size=8,
                     sasrec=dict(max_len=10, d_model=32, heads=2, layers=1, dropout=0.0, lr=5e-3, epochs=40,
                                 eval_every=10, patience=2),
                     generator=dict(d_model=32, heads=2, enc_layers=1, dec_layers=1, max_history=10,
                                    session_len=2),
                     train=dict(epochs=2, val_max_users=16, val_beam=8), beam_width=50)
    lines: list[str] = []
    result = run_eval(cfg, say=lines.append)
    assert result["data"]["users"] == 60 and result["data"]["items"] == N_ITEMS
    assert result["data"]["test_users"] == 60
    s = result["summary"]
    for model in ("generator", "sasrec", "popularity"):
        for k in ("hr@1", "hr@5", "hr@10", "hr@50", "ndcg@5", "ndcg@10", "ndcg@50", "mrr", "coverage@10",
                  "invalid_rate", "seen_rate", "train_s"):
            assert k in s[model], (model, k)
        assert s[model]["seen_rate"]["mean"] == 0.0  # the shared exclude-seen rule holds for every model
    assert s["generator"]["invalid_rate"]["mean"] == 0.0  # trie-constrained decoding
    assert s["sasrec"]["ndcg@10"]["mean"] > s["popularity"]["ndcg@10"]["mean"] + 0.2
    assert "| generator (n=1) |" in result["table"] and "| sasrec (n=1) |" in result["table"]
    assert any("level sizes" in line for line in lines)
    # the walks' next item always neighbours the last one: validation gives the transition prior weight,
    # and the test ranking with it beats the same model's ranking without it
    g = result["runs"]["generator"][0]["metrics"]
    assert g["transition_weight"] > 0 and g["val_ndcg10_prior"] > g["val_ndcg10_no_prior"]
    assert g["ndcg@10"] > g["ndcg@10_no_prior"]
    assert any("transition prior weight" in line for line in lines)
    out = write_json(result, tmp_path / "res" / "eval.json")
    back = json.loads(out.read_text())
    assert back["summary"]["sasrec"]["ndcg@10"]["mean"] == pytest.approx(s["sasrec"]["ndcg@10"]["mean"])


def test_archive_directory_is_read_like_a_file(tmp_path):
    import pyarrow.parquet as pq

    from ingest.archive import file_name, topic_dir
    from ingest.arrow_schemas import to_table
    from ingest.contract import ITEM_EVENTS, USER_EVENTS, ItemEvent, UserEvent

    rows = _walks(n_users=5, length=4)
    ue = [UserEvent(event_id=f"e{k}", user_id=u, item_id=i, type="click" if k else "skip", ts=t * 1000)
          for k, (u, i, t) in enumerate(rows)]
    for topic, recs in ((USER_EVENTS, ue), (ITEM_EVENTS, [ItemEvent(item_id="m1", ts=1, title="Heat")])):
        d = topic_dir(tmp_path / "archive", topic) / "date=2026-01-01"
        d.mkdir(parents=True)
        n = len(recs)
        pq.write_table(to_table(recs, topic, [0] * n, range(n)), d / file_name(0, 0, n, 0, 1))
    log = load_log(str(tmp_path / "archive"))
    assert len(log) == len(rows) - 1  # the skip is not an engaged event
    assert set(log.users) == {f"u{u}" for u in range(5)}
    assert list(log.ts) == sorted(log.ts)
    assert log.titles == {"m1": "Heat"}


def _genrec(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "infra.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_on_a_sasrec_text_file_writes_json(tmp_path):
    seqs: dict[str, list[str]] = {}
    for u, i, _ in _walks(n_users=30, length=8):
        seqs.setdefault(u, []).append(i)
    data = tmp_path / "seqs.txt"
    data.write_text("".join(f"{u} {' '.join(items)}\n" for u, items in seqs.items()))
    out = tmp_path / "eval.json"
    r = _genrec("eval", "--data", str(data), "--models", "popularity,sasrec", "--epochs", "1",
                "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "| sasrec (n=1) |" in r.stdout and "| popularity (n=1) |" in r.stdout
    res = json.loads(out.read_text())
    assert res["data"]["test_users"] == 30 and set(res["summary"]) == {"popularity", "sasrec"}


def test_bad_input_gives_clear_errors(tmp_path):
    r = _genrec("eval", "--data", str(tmp_path / "missing.csv"), "--models", "popularity", cwd=tmp_path)
    assert r.returncode == 2 and "missing.csv" in r.stderr and "Traceback" not in r.stderr
    r = _genrec("eval", "--models", "knn", cwd=tmp_path)
    assert r.returncode == 2 and "choose from" in r.stderr
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a Parquet archive"):
        load_log(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="n=10 must be >= 50"):
        EvalConfig(n=10)


def test_seeds_run_side_by_side_in_worker_processes_and_merge(csv_file):
    from dataclasses import replace

    from actors.eval_job import merge_runs, run_eval_many

    cfg = EvalConfig(dataset=str(csv_file), models=("sasrec", "popularity"),
                     sasrec=dict(max_len=10, d_model=16, heads=2, layers=1, epochs=3, eval_every=3, patience=1))
    results = run_eval_many([replace(cfg, seeds=(0,)), replace(cfg, seeds=(1,))], workers=2, threads=1)
    assert [r["runs"]["sasrec"][0]["seed"] for r in results] == [0, 1]   # results in the order asked
    merged = merge_runs(results)
    assert [r["seed"] for r in merged["runs"]["sasrec"]] == [0, 1]
    assert len(merged["runs"]["popularity"]) == 1                       # deterministic: kept once
    assert merged["summary"]["sasrec"]["ndcg@10"]["n"] == 2
    assert "| sasrec (n=2) |" in merged["table"]
    with pytest.raises(ValueError, match="at least one"):
        merge_runs([])


def test_genrec_eval_defaults_are_the_best_measured_settings():
    """`genrec eval` with no options runs what EvalConfig (and so the quality suite) defaults to: the same
    embeddings, SID shape, tokenizer and budget clock, and every model at its best measured settings."""
    from actors.eval_job import GENERATOR_DEFAULTS, SASREC_DEFAULTS, TRAIN_DEFAULTS, effective_config
    from infra.cli import build_parser

    args = build_parser().parse_args(["eval"])
    cfg = EvalConfig()
    for cli, field_name in (("embeddings", "embeddings"), ("levels", "levels"), ("tokenizer", "tokenizer"),
                            ("codebook_size", "codebook_size"), ("budget_clock", "budget_clock")):
        assert getattr(args, cli) == getattr(cfg, field_name), field_name
    run = effective_config(EvalConfig(generator={"d_model": 32}))
    assert run["generator"] == {**GENERATOR_DEFAULTS, "d_model": 32}          # one field overridden, rest kept
    assert run["sasrec"] == SASREC_DEFAULTS and run["train"] == TRAIN_DEFAULTS
