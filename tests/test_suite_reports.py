"""Suite reports: the summary matrix, JSON, JUnit XML and the static HTML page, from records of real audits."""
import base64
import html
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from rich.console import Console

import fixtures
import gradaudit
from gradaudit.renderers.html import write_html
from gradaudit.renderers.json import read_json, write_json
from gradaudit.renderers.junit import write_junit
from gradaudit.renderers.rich import suite_table as summary_table
from gradaudit.report import Report
from gradaudit.suite.summary import short_reason, summary_counts

SVG = ('<svg xmlns="http://www.w3.org/2000/svg" width="40" height="20"><rect width="40" height="20" '
       'fill="red"/><text x="2" y="14">FnBackward</text></svg>')


def record(case, backend, order, report=None, status=None, reason="", seconds=0.5):
    if status is None:
        status = "pass" if report.ok else "fail"
    return {"case": case, "backend": backend, "order": order, "status": status, "reason": reason,
            "report": None if report is None else report.to_dict(), "seconds": seconds}


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    good = gradaudit.check(*fixtures.mlp())
    bad = gradaudit.check(*fixtures.wrong_parameter_gradient())
    assert good.ok and not bad.ok
    bad_dict = bad.to_dict()
    # a localization picture, one as a file and one inline; and a message that needs escaping
    svg_file = tmp_path_factory.mktemp("pictures") / "graph.svg"
    svg_file.write_text(SVG)
    bad_dict["findings"][0]["details"]["graph_svg"] = str(svg_file)
    bad_dict["findings"][0]["message"] += " <script>alert('x')</script> & more"
    rows = [
        record("mlp", "eager", 1, good, seconds=0.25),
        {**record("BadBiasLinear", "eager", 1, bad, seconds=2.5), "report": bad_dict},
        record("BadBiasLinear", "xla", 1, status="skip", reason="torch-xla is not installed"),
        record("mlp", "xla", 1, status="error", reason="worker crashed: Segmentation fault (signal 11)\nmore",
               seconds=1.0),
        record("mlp", "eager", 2, status="skip", reason="no double backward"),
    ]
    inline = json.loads(json.dumps(bad_dict))
    inline["findings"][0]["details"].pop("graph_svg")
    inline["findings"][0]["details"]["graph_svg_text"] = SVG
    rows.append({**record("BadBiasLinear", "eager", 2, bad), "report": inline})
    return rows


def test_counts_and_short_reasons(records):
    counts = summary_counts(records)
    assert {k: counts[k] for k in ("total", "pass", "fail", "skip", "error", "cases")} == \
        {"total": 6, "pass": 1, "fail": 2, "skip": 2, "error": 1, "cases": 2}
    assert counts["by_backend"]["xla"] == {"pass": 0, "fail": 0, "skip": 1, "error": 1}
    assert counts["by_column"]["eager o2"]["fail"] == 1 and not counts["ok"]
    assert short_reason(records[0]) == ""
    assert short_reason(records[1]) == "faulty_backward fc2.bias @ FnBackward"
    assert short_reason(records[3]) == "worker crashed: Segmentation fault (signal 11)"


def test_summary_table(records):
    table = summary_table(records)
    assert [c.header for c in table.columns] == ["case", "eager o1", "eager o2", "xla o1"]
    assert table.row_count == 3  # two cases and the totals
    console = Console(width=160, record=True, color_system=None)
    console.print(table)
    text = console.export_text()
    assert "FAIL faulty_backward fc2.bias" in text and "skip torch-xla is not installed" in text
    assert "ERROR worker crashed" in text and "total" in text and "1 pass 1 fail" in text
    assert "6 results over 2 cases: 1 pass, 2 fail, 2 skip, 1 error" in text


def test_json_round_trip(records, tmp_path):
    path = write_json(records, tmp_path / "out" / "suite.json", suite="torch.nn")
    document = json.loads(path.read_text())
    assert document["suite"] == "torch.nn" and document["summary"]["fail"] == 2
    assert read_json(path) == json.loads(json.dumps(records))


def test_junit_xml(records, tmp_path):
    path = write_junit(records, tmp_path / "junit.xml")
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("errors"), root.get("skipped")) == ("6", "2", "1", "2")
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert set(suites) == {"gradaudit.eager", "gradaudit.xla"}
    eager = suites["gradaudit.eager"]
    assert (eager.get("tests"), eager.get("failures"), eager.get("errors"), eager.get("skipped")) == ("4", "2", "0", "1")
    cases = {c.get("name"): c for c in eager.findall("testcase")}
    assert set(cases) == {"mlp[order 1]", "BadBiasLinear[order 1]", "mlp[order 2]", "BadBiasLinear[order 2]"}
    assert all(c.get("classname") == "gradaudit.eager" and float(c.get("time")) >= 0 for c in cases.values())
    assert cases["BadBiasLinear[order 1]"].get("time") == "2.500"
    failure = cases["BadBiasLinear[order 1]"].find("failure")
    assert "fc2.bias" in failure.get("message") and "FnBackward" in failure.get("message")
    assert "fixtures.py:" in failure.get("message") and failure.get("type") == "faulty_backward"
    assert "analytical" in failure.text and "failed checks" in failure.text
    assert cases["mlp[order 1]"].find("failure") is None and cases["mlp[order 1]"].find("system-out") is not None
    assert cases["mlp[order 2]"].find("skipped").get("message") == "no double backward"
    xla = {c.get("name"): c for c in suites["gradaudit.xla"].findall("testcase")}
    error = xla["mlp[order 1]"].find("error")
    assert error.get("message").startswith("worker crashed: Segmentation fault") and "\n" not in error.get("message")
    assert xla["BadBiasLinear[order 1]"].find("skipped") is not None
    # every child of a testcase is one of the plain JUnit elements
    allowed = {"failure", "error", "skipped", "system-out", "system-err"}
    assert all(child.tag in allowed for c in root.iter("testcase") for child in c)


def test_junit_survives_control_characters(tmp_path):
    rows = [{"case": "weird\x01<case>", "backend": "eager", "order": 1, "status": "error", "reason": "bad \x00 byte",
             "report": None, "seconds": float("nan")}]
    root = ET.parse(write_junit(rows, tmp_path / "j.xml")).getroot()
    case = root.find("testsuite/testcase")
    assert case.get("name") == "weird?<case>[order 1]" and case.get("time") == "0.000"


def test_html_report(records, tmp_path):
    pictures = Path(records[1]["report"]["findings"][0]["details"]["graph_svg"]).parent  # a results directory
    path = write_html(records, tmp_path / "report.html", title="zoo <audit>", results_dir=pictures)
    page = path.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<title>zoo &lt;audit&gt;</title>" in page
    assert "<script" not in page  # the planted script tag is escaped, and the page has no scripts of its own
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; more" in page  # (jinja2's autoescape)
    assert html.escape(records[2]["reason"]) in page and "worker crashed" in page
    for text in ("fc2.bias", "FnBackward", "fixtures.py:", "analytical vs numerical", "Failing checks",
                 'id="case-BadBiasLinear"', 'href="#case-mlp"'):
        assert text in page, text
    # both pictures (file and inline text) are embedded as data URIs
    data = base64.b64encode(SVG.encode()).decode()
    assert page.count(f"data:image/svg+xml;base64,{data}") == 2
    assert "http://" not in page.replace("http://www.w3.org", "")  # self-contained: nothing to fetch


def test_html_missing_picture_and_empty(tmp_path):
    rows = [{"case": "c", "backend": "eager", "order": 1, "status": "fail", "reason": "", "seconds": 1,
             "report": {"ok": False, "checks": [], "findings": [
                 {"kind": "faulty_backward", "message": "m", "details": {"graph_svg": "nowhere.svg"}}]}}]
    page = write_html(rows, tmp_path / "r.html").read_text()
    assert "localization picture not found" in page and "nowhere.svg" in page
    assert "nothing run" in write_html([], tmp_path / "empty.html").read_text()
    assert summary_counts([])["total"] == 0 and summary_table([]).row_count == 1


def test_report_text_reads_like_a_bug_report(records):
    text = Report.from_dict(records[1]["report"]).text()
    assert "faulty_backward (order 1, wrt fc2.bias, reverse)" in text
    # the bias gradient is 1/6 of the truth at every element; equal elements tie for the worst, so any may be named
    assert re.search(r"worst element \[\d\], analytical 0.666667 vs numerical 4,", text)
    assert "at node FnBackward, op Fn, source fixtures.py:" in text


def test_html_anchors_are_distinct(tmp_path):
    rows = [{"case": name, "backend": "eager", "order": 1, "status": "pass", "report": None, "seconds": 0}
            for name in ("a b", "a/b", "a-b")]
    page = write_html(rows, tmp_path / "r.html").read_text()
    assert all(f'id="{anchor}"' in page for anchor in ("case-a-b", "case-a-b-2", "case-a-b-3"))
