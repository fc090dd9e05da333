"""The device script (tests/bench/bench_gpu.py) runs end to end with --quick and writes every figure's key,
so it cannot rot between the tasks that are lent a GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[3]


def test_bench_gpu_quick_writes_every_figure(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "bench" / "bench_gpu.py"), "--quick", "--json",
                           str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[bench_gpu" in proc.stderr and "done in" in proc.stderr          # progress is printed
    res = json.loads(out.read_text())
    assert res["suite"] == "gpu" and res["config"]["quick"] is True
    m = res["metrics"]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    assert res["config"]["devices"] == devices and m["cuda"] == (len(devices) == 2)
    for dev in devices:
        for key in ("beam_b1_ms", "spec_beam_b1_ms", "spec_beam_speedup", "lossless_identical_fraction",
                    "spec_beam_acceptance_rate", "serving_rows1_ms", "serving_rows64_ms",
                    "serving_rows64_over_rows1", "constraint_step_us_10k", "constraint_step_us_100k",
                    "catalog_update_ms_100k", "catalog_rebuild_ms_100k", "constraint_step_ratio_top_10k"):
            assert f"{dev}_{key}" in m, f"missing {dev}_{key}"
            assert m[f"{dev}_{key}"] > 0
        assert m[f"{dev}_lossless_identical_fraction"] == 1.0                # spec_beam is lossless
        assert m[f"{dev}_step_graphs_compile_beam_speedup"] > 0 and m[f"{dev}_step_graphs_compile_warmup_s"] > 0
        assert m[f"{dev}_step_graphs_identical_fraction"] == 1.0             # compiled steps decode the same
    assert m["spec_beam_speedup"] > 0 and m["lossless_identical_fraction"] == 1.0
    assert m["constraint_bytes_per_item"] > 0
    if "cuda" in devices:
        assert m["gpu_over_cpu_batch1"] > 0 and m["gpu_rows64_over_rows1"] > 0
    else:
        assert "gpu_over_cpu_batch1" not in m                                # not faked on a CPU-only machine
