"""The HTML pages of experiments and reports: escaping, empty reports, every arm shown."""

from __future__ import annotations

from html.parser import HTMLParser

import numpy as np

from ingest.contract import Served, UserEvent
from serving.experiments.config import ExperimentsConfig
from serving.experiments.html import experiments_page, message_page, report_page
from tests.serving.experiments.two_arms import CFG
from serving.experiments.report import build_report


EVIL = ExperimentsConfig.from_yaml("""
default: {model_version: v1, decode: {mode: greedy}}
layers:
  - name: "l<b>"
    experiments:
      - name: "<script>alert(1)"
        control: "<script>c"
        arms:
          - {name: "<script>c", weight: 1}
          - {name: "t&\\"x'", weight: 3, model_version: "<img src=x>", decode: {mode: beam}}
          - {name: plain, weight: 1}
""")


class Tags(HTMLParser):
    """Collects start tags and text, to check what a browser would see as markup."""

    def __init__(self, html: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def world(n=400, seed=0):
    """Served sessions of 5 items and their clicks; arm b's users click twice as often as arm a's."""
    rng = np.random.default_rng(seed)
    exp = CFG.experiment("exp")
    served, events = [], []
    for i in range(n):
        u, rid = f"u{i}", f"r{i}"
        arm = exp.arm_for(u).name
        served.append(Served(rid, u, 1000 + i, "v1", "exp", arm, [f"i{j}" for j in range(5)],
                             [[j, 0] for j in range(5)], [0.0] * 5))
        for j in range(5):
            if rng.random() < (0.2 if arm == "a" else 0.4):
                events.append(UserEvent(f"e{i}-{j}", u, f"i{j}", "click", 2000 + i, request_id=rid))
    return served, events


def _empty_report(cfg=CFG, name="exp"):
    return {**build_report(cfg.experiment(name), [], []), "source": "served+user-events"}


def test_names_with_markup_are_escaped_everywhere():
    exp = EVIL.experiment("<script>alert(1)")
    for html in (report_page(_empty_report(EVIL, exp.name)), experiments_page({"version": 1, **EVIL.describe()}),
                 message_page("Experiment <script>x</script>", "no experiment '<script>x</script>'")):
        p = Tags(html)
        assert {t for t, _ in p.tags} <= {"html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "a",
                                          "code", "table", "tr", "th", "td", "span", "br", "ul", "li", "img"}
        assert "<script>" not in html and "&lt;script&gt;" in html
        assert not any(t == "img" and a.get("src") == "x" for t, a in p.tags)
    described = EVIL.describe()
    described["layers"][0]["experiments"][0]["arms"][1]["decode"] = {"mode": "<i>beam</i>"}
    listing = experiments_page({"version": 1, **described})
    assert "&lt;img src=x&gt;" in listing and "&lt;i&gt;beam&lt;/i&gt;" in listing and "t&amp;&quot;x&#x27;" in listing
    hrefs = [a["href"] for t, a in Tags(listing).tags if t == "a"]
    assert hrefs == ["experiments/%3Cscript%3Ealert%281%29/report.html"]


def test_empty_report_says_there_is_no_data_and_shows_every_arm():
    html = report_page(_empty_report())
    p = Tags(html)
    text = " ".join(p.text)
    assert "No records for this experiment yet" in text and "no users yet" in text
    assert "Experiment exp" in "".join(p.text[:2])  # the title
    rows = [t for t, _ in p.tags if t == "tr"]
    assert len(rows) > 5
    assert ("img", {"class": "plot", "src": "report.png", "alt": "forest plot of lifts and cumulative lift of exp"}) \
        in p.tags
    assert "served+user-events" in text and "Traceback" not in text


def test_full_report_has_every_arm_metric_guardrail_and_note():
    served, events = world()
    rep = {**build_report(CFG.experiment("exp"), served, events), "source": "rewards"}
    text = " ".join(Tags(report_page(rep)).text)
    for arm in rep["arms"]:
        assert f" {arm} " in f" {text} "
    for m in rep["analysis"]["tested"]:
        assert m in text
    assert f"{rep['arms']['b']['metrics']['ctr']['vs_control']['relative'] * 100:+.2f}%" in text  # the lift
    assert "yes" in text  # b is significantly better on ctr
    for g in rep["guardrails"]:
        assert g["metric"] in text
    for msg in rep["messages"]:
        assert msg in text
    assert "SRM check" in text and "rewards" in text


def test_partial_report_renders_instead_of_raising():
    html = report_page({"experiment": "x", "arms": {"a": {"is_control": True}, "b": {"metrics": {"ctr": None}}}})
    text = " ".join(Tags(html).text)
    assert "Experiment x" in text and " a " in f" {text} " and " b " in f" {text} "
    assert "SRM" in text


def test_experiments_page_lists_layers_arms_weights_and_settings():
    from tests.serving.conftest import EXPERIMENTS

    cfg = ExperimentsConfig.from_yaml(EXPERIMENTS)
    html = experiments_page({"version": 2, **cfg.describe()})
    text = " ".join(Tags(html).text)
    for layer in ("decoding", "models"):
        assert f"Layer {layer}" in text
    for arm in ("greedy", "beam", "small", "other"):
        assert arm in text
    assert "mode=beam, beam_width=2" in text and "v2" in text and "50.00%" in text
    assert 'href="experiments/decode-ab/report.html"' in html and 'href="experiments/model-ab/report.html"' in html
    assert "No experiments are configured" in experiments_page({"version": 0, "default": {}, "layers": []})
