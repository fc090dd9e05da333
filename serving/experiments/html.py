"""Server-rendered HTML pages of the experiments and their reports, for people.

Pure functions from the JSON the API already returns (``ExperimentsConfig.describe()``, a report dict) to an
HTML string: no templates to build, and every value goes through :func:`html.escape`, so experiment or arm
names cannot inject markup. Missing or partial data renders as a readable message, never raises.
"""

from __future__ import annotations

from html import escape
from urllib.parse import quote

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:72rem;
     padding:0 1rem;color:#1d2330;line-height:1.4}
h1{font-size:1.6rem;margin-bottom:.2rem} h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #dde}
table{border-collapse:collapse;margin:.5rem 0;font-size:.92rem}
th,td{border:1px solid #d5d9e2;padding:.3rem .6rem;text-align:left;vertical-align:top}
th{background:#f2f4f8} td.num{text-align:right;font-variant-numeric:tabular-nums}
.meta{color:#5a6272} .msg{padding:.6rem 1rem;border-radius:4px;background:#fff6e0;border:1px solid #f0c36d}
.bad{color:#b00020;font-weight:600} .good{color:#1b7f3b;font-weight:600} .muted{color:#7a8190}
img.plot{max-width:100%;border:1px solid #d5d9e2;margin-top:.5rem}
code{background:#f2f4f8;padding:0 .25rem;border-radius:3px}
"""


def e(value) -> str:
    """Any value as escaped HTML text (None → "-")."""
    return "-" if value is None else escape(str(value), quote=True)


def page(title: str, body: str) -> str:
    """A complete HTML document titled ``title`` (escaped here) around the already-escaped ``body``."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{e(title)}</title><style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n")


def message_page(title: str, message: str, back: str | None = None) -> str:
    """A page that only says what went wrong (unknown experiment, report not computable), in words."""
    link = f'<p><a href="{e(back)}">all experiments</a></p>' if back else ""
    return page(title, f"<h1>{e(title)}</h1>\n<p class=\"msg\">{e(message)}</p>\n{link}")


def report_href(name: str) -> str:
    """The report page of experiment ``name``, relative to ``/v1/experiments.html``."""
    return f"experiments/{quote(str(name), safe='')}/report.html"


def _formatted(v, fmt) -> str:
    """``fmt(float(v))`` escaped; ``-`` for a missing value, the escaped value itself when not a number."""
    if v is None:
        return "-"
    try:
        return e(fmt(float(v)))
    except (TypeError, ValueError):
        return e(v)


def _num(v, digits: int = 4) -> str:
    return _formatted(v, lambda x: f"{x:.{digits}g}")


def _pct(v) -> str:
    return _formatted(v, lambda x: f"{x * 100:+.2f}%")


def _settings(value, default=None) -> str:
    if value is None or value == {}:
        return f'<span class="muted">default{" (" + _settings(default) + ")" if default else ""}</span>'
    if isinstance(value, dict):
        return e(", ".join(f"{k}={v}" for k, v in value.items()))
    return e(value)


def experiments_page(described: dict) -> str:
    """The experiment list (``{"version": ..., **ExperimentsConfig.describe()}``): layers, arms with traffic
    weights, model version and decode settings per arm, a link to each report page."""
    default = described.get("default") or {}
    out = ["<h1>Experiments</h1>",
           f'<p class="meta">config version {e(described.get("version"))}; default model '
           f'<code>{e(default.get("model_version"))}</code>, decode {_settings(default.get("decode"))}</p>']
    layers = described.get("layers") or []
    if not layers:
        out.append('<p class="msg">No experiments are configured: every user gets the default model.</p>')
    for layer in layers:
        out.append(f"<h2>Layer {e(layer.get('name'))}</h2>")
        exps = layer.get("experiments") or []
        if not exps:
            out.append('<p class="msg">This layer has no experiments.</p>')
            continue
        out.append("<table><tr><th>experiment</th><th>traffic</th><th>control</th><th>arm</th><th>weight</th>"
                   "<th>share</th><th>model version</th><th>decode</th></tr>")
        for x in exps:
            arms = x.get("arms") or []
            weights = x.get("weights") or {}
            name = x.get("name")
            status = "" if x.get("enabled", True) else ' <span class="bad">(disabled)</span>'
            head = (f'<td rowspan="{max(1, len(arms))}"><a href="{e(report_href(name))}">{e(name)}</a>{status}</td>'
                    f'<td class="num" rowspan="{max(1, len(arms))}">{_pct(x.get("traffic")).lstrip("+")}</td>'
                    f'<td rowspan="{max(1, len(arms))}">{e(x.get("control"))}</td>')
            if not arms:
                out.append(f'<tr>{head}<td colspan="5" class="muted">no arms</td></tr>')
            for i, a in enumerate(arms):
                mv = a.get("model_version")
                model = e(mv) if mv else f'<span class="muted">default ({e(default.get("model_version"))})</span>'
                out.append(f'<tr>{head if i == 0 else ""}<td>{e(a.get("name"))}</td>'
                           f'<td class="num">{_num(a.get("weight"))}</td>'
                           f'<td class="num">{_pct(weights.get(a.get("name"))).lstrip("+")}</td>'
                           f"<td>{model}</td><td>{_settings(a.get('decode'), default.get('decode'))}</td></tr>")
        out.append("</table>")
    return page("Experiments", "\n".join(out))


def _ci(m: dict | None) -> str:
    if not m or m.get("mean") is None:
        return '<span class="muted">no data</span>'
    return f"{_num(m['mean'])} [{_num(m.get('ci_low'))}, {_num(m.get('ci_high'))}]"


def _vs_control(w: dict, sequential: bool) -> str:
    """The comparison cells: lift (or absolute difference) with CI, p, adjusted p, significant."""
    p = w.get("p_value_sequential") if sequential else w.get("p_value")
    if w.get("relative") is not None:
        lift = f"{_pct(w['relative'])} [{_pct(w.get('rel_ci_low'))}, {_pct(w.get('rel_ci_high'))}]"
        if sequential:
            lift += (f' <span class="muted">always-valid [{_pct(w.get("rel_cs_low"))}, '
                     f'{_pct(w.get("rel_cs_high"))}]</span>')
    elif w.get("diff") is not None and w.get("p_value") is not None:
        lift = f"Δ {_num(w['diff'])} [{_num(w.get('ci_low'))}, {_num(w.get('ci_high'))}] (absolute)"
    else:
        return f'<td colspan="4" class="muted">{e(w.get("note") or "not testable")}</td>'
    if "significant" not in w:
        sig = '<span class="muted">not tested</span>'
    else:
        sig = '<span class="good">yes</span>' if w.get("significant") else "no"
    note = f'<br><span class="muted">{e(w["note"])}</span>' if w.get("note") else ""
    return (f"<td>{lift}{note}</td><td class=\"num\">{_num(p, 3)}</td>"
            f"<td class=\"num\">{_num(w.get('p_adjusted'), 3)}</td>"
            f"<td>{sig}</td>")


def report_page(report: dict) -> str:
    """One experiment's report (the ``GET /v1/experiments/{name}/report`` JSON) as a page: arms and traffic,
    metric table against control, guardrails, SRM, notes, where the records came from, and the plot."""
    name = report.get("experiment", "?")
    an = report.get("analysis") or {}
    seq = bool(an.get("sequential"))
    arms = report.get("arms") or {}
    weights = report.get("weights") or {}
    control = report.get("control")
    out = [f"<h1>Experiment {e(name)}</h1>",
           f'<p class="meta">control <code>{e(control)}</code>; {e(report.get("users", 0))} users, '
           f'{e(report.get("sessions", 0))} sessions; unit of analysis: {e(report.get("unit", "user"))}; '
           f'correction {e(an.get("correction"))}, α={e(an.get("alpha"))}'
           f'{"; sequential (always-valid)" if seq else ""}; {e(an.get("cuped_note"))}; '
           f'records: <code>{e(report.get("source") or "unknown")}</code></p>',
           '<p><a href="../../experiments.html">all experiments</a> · '
           '<a href="report">JSON</a> · <a href="report?format=markdown">markdown</a></p>']
    if not report.get("users"):
        out.append('<p class="msg">No records for this experiment yet: no user has been served and given '
                   "feedback in it, so there is nothing to compare.</p>")

    out.append("<h2>Arms and traffic</h2>")
    out.append("<table><tr><th>arm</th><th>planned share</th><th>users</th><th>sessions</th>"
               "<th>sessions with feedback</th><th>p99 latency (ms)</th><th>catalog coverage</th></tr>")
    for a, r in arms.items():
        tag = " (control)" if r.get("is_control") else ("" if r.get("in_config", True) else " (not in config)")
        empty = ' <span class="bad">no users yet</span>' if not r.get("users") else ""
        out.append(f"<tr><td>{e(a)}{e(tag)}{empty}</td><td class=\"num\">{_pct(weights.get(a)).lstrip('+')}</td>"
                   f"<td class=\"num\">{e(r.get('users', 0))}</td><td class=\"num\">{e(r.get('exposures', 0))}</td>"
                   f"<td class=\"num\">{e(r.get('sessions_with_feedback', 0))}</td>"
                   f"<td class=\"num\">{_num(r.get('p99_latency_ms'), 4)}</td>"
                   f"<td class=\"num\">{_num(r.get('catalog_coverage'), 3)}</td></tr>")
    out.append("</table>")
    if not arms:
        out.append('<p class="msg">The report lists no arms.</p>')

    out.append("<h2>Metrics</h2>")
    tested = list(an.get("tested") or [])
    metric_names = list(tested)
    for r in arms.values():
        metric_names += [m for m in (r.get("metrics") or {}) if m not in metric_names]
    level = int(round((1 - (an.get("alpha") or 0.05)) * 100))
    out.append(f"<table><tr><th>metric</th><th>arm</th><th>value [{e(level)}% CI]</th>"
               "<th>vs control: lift [CI]" + (" / always-valid" if seq else "") +
               "</th><th>p</th><th>p adjusted</th><th>significant</th></tr>")
    for m in metric_names:
        role = "primary" if m in (an.get("primary") or []) else ("secondary" if m in tested else "not tested")
        for i, (a, r) in enumerate(arms.items()):
            mm = (r.get("metrics") or {}).get(m)
            head = f'<td rowspan="{len(arms)}">{e(m)}<br><span class="muted">{e(role)}</span></td>' if i == 0 else ""
            if r.get("is_control"):
                cmp = '<td colspan="4" class="muted">control</td>'
            else:
                cmp = _vs_control((mm or {}).get("vs_control") or {}, seq)
            out.append(f"<tr>{head}<td>{e(a)}</td><td>{_ci(mm)}</td>{cmp}</tr>")
    out.append("</table>")

    out.append("<h2>Guardrails</h2>")
    guards = report.get("guardrails") or []
    if not guards:
        out.append('<p class="muted">No guardrails configured.</p>')
    else:
        out.append("<table><tr><th>metric</th><th>arm</th><th>status</th><th>max relative drop</th>"
                   "<th>relative change</th><th>one-sided p</th><th>note</th></tr>")
        for g in guards:
            cls = "good" if g.get("status") == "ok" else ("bad" if not g.get("ok", True) else "muted")
            out.append(f"<tr><td>{e(g.get('metric'))}</td><td>{e(g.get('arm'))}</td>"
                       f"<td class=\"{cls}\">{e(g.get('status'))}</td>"
                       f"<td class=\"num\">{_pct(g.get('max_relative_drop')).lstrip('+')}</td>"
                       f"<td class=\"num\">{_pct(g.get('relative'))}</td>"
                       f"<td class=\"num\">{_num(g.get('p_value'), 3)}</td>"
                       f"<td>{e(g.get('note') or '')}</td></tr>")
        out.append("</table>")

    srm = report.get("srm") or {}
    out.append("<h2>Sample ratio</h2>")
    if srm.get("srm"):
        out.append(f'<p class="bad">SAMPLE RATIO MISMATCH (p={_num(srm.get("p_value"), 3)}): the split is not '
                   "what was configured; do not trust this report.</p>")
    else:
        out.append(f'<p>SRM check p={_num(srm.get("p_value"), 3)}: <span class="good">ok</span></p>')

    if report.get("inputs"):
        from serving.experiments.report import inputs_line

        out.append(f'<p class="muted">{e(inputs_line(report["inputs"]))}</p>')
    out.append("<h2>Notes</h2>")
    msgs = report.get("messages") or []
    out.append("<ul>" + "".join(f"<li>{e(m)}</li>" for m in msgs) + "</ul>" if msgs
               else '<p class="muted">None.</p>')

    out.append("<h2>Plot</h2>")
    out.append(f'<img class="plot" src="report.png" alt="forest plot of lifts and cumulative lift of {e(name)}">')
    return page(f"Experiment {name}", "\n".join(out))

