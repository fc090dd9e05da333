"""``genrec tokenize`` on an ID-only interactions file: collaborative embeddings -> SIDs -> files."""

from __future__ import annotations

import json

import numpy as np

from actors.checkpoint import CheckpointStore
from infra.cli import main
from models.sid.catalog import Catalog
from models.sid.tokenizer import tokenizer_from_bytes


def test_tokenize_writes_tokenizer_catalog_and_report(tmp_path, capsys):
    rng = np.random.default_rng(0)
    rows = ["user,item,timestamp"]
    for u in range(150):
        group = u % 3
        for k, it in enumerate(rng.integers(0, 20, 12)):
            rows.append(f"u{u},m{group * 20 + it},{1_000 + u * 100 + k}")
    data = tmp_path / "inter.csv"
    data.write_text("\n".join(rows) + "\n")
    out = tmp_path / "tok"
    rc = main(["tokenize", "--data", str(data), "--embeddings", "collab", "--codebook-size", "4",
               "--out", str(out), "--install-checkpoint", str(tmp_path / "ck"), "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["items"] == 60 and summary["unique_sid_fraction"] == 1.0
    assert summary["sid_level_sizes"][:3] == [4, 4, 4]
    tok = tokenizer_from_bytes((out / "tokenizer.bin").read_bytes())
    assert tok.version == summary["tokenizer"]
    cat = Catalog.from_bytes((out / "catalog.bin").read_bytes())
    assert len(cat) == 60
    sids = cat.sids()
    assert np.unique(sids, axis=0).shape[0] == 60
    # the first code separates the co-consumption groups: each code is (almost) pure in one group
    group = np.array([int(cat.item_id(i)[1:]) // 20 for i in range(60)])
    for code in np.unique(sids[:, 0]):
        members = group[sids[:, 0] == code]
        assert np.bincount(members).max() >= 0.9 * members.size
    assert CheckpointStore(str(tmp_path / "ck")).exists("item-indexer.tokenizer")
