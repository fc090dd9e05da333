"""Benchmark harness: suites in ``tests/bench/bench_<suite>.py``, results in BENCHMARKS.md.

A suite module defines ``SUITE`` (its name), optionally ``DATASETS`` (names it
accepts for ``--dataset``) and ``run(quick: bool, dataset: str | None) -> dict``
returning ``{"config": {...}, "metrics": {name: number}}``. Speed is always
measured as ratios against a baseline run in the same process (the machines
are shared and noisy); no benchmark gates CI on absolute time.

``genrec bench SUITE --json`` prints one JSON object: ``suite``, ``machine``,
``config``, ``metrics`` (docs/architecture.md §7). ``--write BENCHMARKS.md`` replaces that
suite's section of the file (between ``<!-- bench:NAME -->`` markers); a suite may also return
``plots`` (paths of PNG files it wrote), which are copied beside that file and linked from its section.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO / "tests" / "bench"


def available_suites() -> list[str]:
    return sorted(p.stem[len("bench_"):] for p in BENCH_DIR.glob("bench_*.py"))


def load_suite(name: str):
    path = BENCH_DIR / f"bench_{name}.py"
    if not path.is_file():
        raise ValueError(f"unknown benchmark suite {name!r}; available: {', '.join(available_suites())}")
    spec = importlib.util.spec_from_file_location(f"genrec_bench_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod   # dataclasses (and pickling) look a module up by name while it loads
    try:   # Ray workers cannot import a suite loaded by path: cloudpickle ships its functions by value
        import ray.cloudpickle

        ray.cloudpickle.register_pickle_by_value(mod)
    except ImportError:
        pass
    spec.loader.exec_module(mod)
    return mod


def machine() -> dict:
    """What the figures were measured on."""
    info = {
        "host_cpus": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"model name\s*:\s*(.+)", f.read())
            if m:
                info["cpu"] = m.group(1).strip()
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            info["mem_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    except ImportError:
        pass
    return info


def run_suite(name: str, quick: bool = False, dataset: str | None = None) -> dict:
    mod = load_suite(name)
    if dataset is not None and dataset not in getattr(mod, "DATASETS", ()) and not os.path.exists(dataset):
        raise ValueError(f"suite {name!r} does not take --dataset {dataset!r}; "
                         f"it takes {list(getattr(mod, 'DATASETS', ())) or 'none'}")
    t0 = time.time()
    return result_of(name, mod.run(quick=quick, dataset=dataset), t0, quick, dataset)


def result_of(name: str, out: dict, t0: float, quick: bool, dataset: str | None = None) -> dict:
    """One suite's result record from what its ``run`` returned (``genrec bench`` and the suites' own mains)."""
    metrics = {k: (float(v) if not isinstance(v, str) else v) for k, v in out["metrics"].items()}
    return {
        "suite": name,
        "machine": machine(),
        "config": {**out.get("config", {}), "quick": quick, **({"dataset": dataset} if dataset else {})},
        "metrics": metrics,
        "elapsed_s": round(time.time() - t0, 1),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "tables": out.get("tables", []),
        "plots": [str(p) for p in out.get("plots", [])],
    }


def emit(result: dict, json_path: str | None = None) -> None:
    """Print ``result`` as a table and, with ``json_path``, write it there as JSON (a suite's own main)."""
    print(format_table(result))
    if json_path:
        Path(json_path).write_text(json.dumps(result))


def format_table(result: dict) -> str:
    """A readable table of one result (what ``genrec bench SUITE`` prints)."""
    lines = [f"suite {result['suite']}  ({result['elapsed_s']} s, {result['date']})",
             "machine: " + ", ".join(f"{k}={v}" for k, v in result["machine"].items()),
             "config:  " + ", ".join(f"{k}={v}" for k, v in result["config"].items()), ""]
    width = max((len(k) for k in result["metrics"]), default=10)
    for k, v in result["metrics"].items():
        lines.append(f"  {k:<{width}}  {_fmt(v)}")
    for t in result.get("tables", []):
        lines += ["", t]
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, str):
        return v
    if v == int(v) and abs(v) < 1e15:
        return f"{int(v):,}"
    return f"{v:,.4g}" if abs(v) < 1e4 else f"{v:,.0f}"


def section_markdown(result: dict, command: str) -> str:
    m = result["machine"]
    rows = "\n".join(f"| `{k}` | {_fmt(v)} |" for k, v in result["metrics"].items())
    extra = "\n\n".join(result.get("tables", []) + [f"![{Path(p).stem}]({Path(p).name})"
                                                    for p in result.get("plots", [])])
    return (f"## {result['suite']}{' — ' + result['config']['dataset'] if result['config'].get('dataset') else ''}\n\n"
            f"Command: `{command}`  \n"
            f"Measured: {result['date']}, {result['elapsed_s']} s  \n"
            f"Machine: {m.get('cpu')}, {m.get('host_cpus')} CPUs, {m.get('mem_gib')} GiB, "
            f"GPU: {m.get('gpu', 'none')}, Python {m.get('python')}, torch {m.get('torch', '-')}  \n"
            f"Config: {json.dumps(result['config'])}\n\n"
            f"| metric | value |\n|---|---|\n{rows}\n" + (f"\n{extra}\n" if extra else ""))


def write_section(path: Path, result: dict, command: str) -> None:
    """Replace (or append) this suite's section of BENCHMARKS.md."""
    key = result["suite"] + (f":{result['config']['dataset']}" if result["config"].get("dataset") else "")
    start, end = f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"
    body = f"{start}\n{section_markdown(result, command)}{end}"
    text = path.read_text() if path.exists() else (
        "# Benchmarks\n\nLatest full run of every suite, with the machine it ran on and the command that "
        "produced it. Speed figures are ratios against a baseline measured in the same run; absolute "
        "times depend on the (shared, noisy) machine.\n\n")
    if start in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: body, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + body + "\n"
    path.write_text(text)
    for p in result.get("plots", []):   # beside the markdown file, as its section links them
        import shutil

        shutil.copyfile(p, path.parent / Path(p).name)
