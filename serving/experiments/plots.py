"""Report plots (matplotlib, Agg backend, PNG): a forest plot of relative lifts and the cumulative lift.

Left: each tested metric's relative lift per treatment arm with its
fixed-horizon interval (thick) and, when the experiment is sequential, its
always-valid confidence sequence (thin). Right: the primary metric's relative
lift at each look over time with the interval and the sequence as bands.
Invariant: draws only what the (JSON-safe) report holds; missing values are
skipped, never plotted as zero.
"""

from __future__ import annotations

from pathlib import Path


def _num(v) -> bool:
    return isinstance(v, (int, float))


def forest(ax, report: dict) -> None:
    """Relative lift ± intervals per (metric, arm) against control."""
    rows = []
    for arm, a in report["arms"].items():
        if a["is_control"]:
            continue
        for m in report["analysis"]["tested"]:
            r = a["metrics"].get(m, {}).get("vs_control")
            if r and _num(r.get("relative")):
                rows.append((f"{m} · {arm}", r))
    for y, (label, r) in enumerate(rows):
        if _num(r.get("rel_cs_low")) and _num(r.get("rel_cs_high")):
            ax.plot([r["rel_cs_low"] * 100, r["rel_cs_high"] * 100], [y, y], color="#999999", lw=1)
        if _num(r.get("rel_ci_low")) and _num(r.get("rel_ci_high")):
            ax.plot([r["rel_ci_low"] * 100, r["rel_ci_high"] * 100], [y, y], color="#1f77b4", lw=3)
        ax.plot([r["relative"] * 100], [y], "o", color="#d62728" if r.get("significant") else "#333333")
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(rows)), [lab for lab, _ in rows], fontsize=8)
    ax.set_ylim(-0.7, max(0.7, len(rows) - 0.3))
    ax.invert_yaxis()
    ax.set_xlabel("relative lift vs control (%)")
    ax.set_title("lift: interval (blue), sequence (grey)", fontsize=9)
    if not rows:
        ax.text(0.5, 0.5, "no testable comparison", transform=ax.transAxes, ha="center")


def cumulative(ax, report: dict) -> None:
    """The primary metric's relative lift at each look, with interval and sequence bands."""
    tl = report.get("timeline") or {}
    looks = tl.get("looks") or []
    drawn = False
    for arm in [a for a, r in report["arms"].items() if not r["is_control"]]:
        pts = [(lk["hours"], lk["arms"].get(arm) or {}) for lk in looks]
        pts = [(h, r) for h, r in pts if _num(r.get("relative"))]
        if not pts:
            continue
        drawn = True
        x = [h for h, _ in pts]
        line, = ax.plot(x, [r["relative"] * 100 for _, r in pts], marker="o", ms=3, label=arm)
        ci = [(h, r) for h, r in pts if _num(r.get("rel_ci_low")) and _num(r.get("rel_ci_high"))]
        if ci:
            ax.fill_between([h for h, _ in ci], [r["rel_ci_low"] * 100 for _, r in ci],
                            [r["rel_ci_high"] * 100 for _, r in ci], color=line.get_color(), alpha=0.25)
        cs = [(h, r) for h, r in pts if _num(r.get("rel_cs_low")) and _num(r.get("rel_cs_high"))]
        if cs:
            ax.plot([h for h, _ in cs], [r["rel_cs_low"] * 100 for _, r in cs], "--", color=line.get_color(), lw=1)
            ax.plot([h for h, _ in cs], [r["rel_cs_high"] * 100 for _, r in cs], "--", color=line.get_color(), lw=1)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xlabel("hours since start")
    ax.set_ylabel(f"relative lift of {tl.get('metric', '-')} (%)")
    ax.set_title("cumulative lift: interval (band), sequence (dashed)", fontsize=9)
    if drawn:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no looks to draw", transform=ax.transAxes, ha="center")


def plot_report(report: dict, path: str | Path) -> Path:
    """Both panels in one PNG at ``path`` (parent folders created)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    forest(a1, report)
    cumulative(a2, report)
    srm = report["srm"]
    fig.suptitle(f"{report['experiment']}: user-level analysis, control {report['control']}"
                 f"{'  — SAMPLE RATIO MISMATCH' if srm.get('srm') else ''}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
