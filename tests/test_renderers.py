"""Reports stay readable whatever prints them: plain text when piped (nothing cut), rich tables on terminals
(numbers whole, names folded), one verdict line when quiet."""
import io
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from gradaudit.cli import main
from gradaudit.report import Check, Finding, Report
from gradaudit.renderers.rich import render_rich
from gradaudit.renderers.text import fmt, render_text

ROOT = Path(__file__).resolve().parent.parent
LONG = "encoder.layers.3.self_attn.out_proj.weight"


def wide_report() -> Report:
    """A failing report whose numbers carry exponents and whose names are long: what truncation used to hide."""
    checks = [Check(1, name, "reverse", ok, "pass" if ok else "fail", max_abs_err=err, max_rel_err=err,
                    tolerance=bar, worst_index=[3, 1] if not ok else None, analytical=1.0000123456e-08,
                    numerical=-2.5e-11)
              for name, ok, err, bar in [("total", False, 0.1916, 1.9350001e-08),
                                         (LONG, False, 0.00306067, 8.631264e-12),
                                         ("fc2.bias", True, 3.375e-14, 2.603e-09)]]
    finding = Finding("faulty_backward", f"order-1 gradient wrt {LONG} is wrong", order=1, wrt=LONG,
                      node="BadGeluBackward", op="BadGelu", module="encoder.layers.3.act", source="model.py:41",
                      max_abs_err=0.00306067, details={"method": "reverse", "worst_index": [3, 1],
                                                       "analytical": 0.026663, "numerical": 0.0236023,
                                                       "error_bar": 8.63126e-12})
    return Report("my_models.py:encoder", "eager", "cpu", "float64", 0, checks=checks, findings=[finding],
                  stats={"seconds": 0.8, "forward_evals": 14, "backward_evals": 6, "compilations": 0},
                  settings={"order": 1})


def numbers(report: Report) -> list[str]:
    return [fmt(value) for c in report.checks
            for value in (c.max_abs_err, c.tolerance, c.analytical, c.numerical)]


def rich_text(report: Report, width: int, **options) -> str:
    console = Console(file=io.StringIO(), force_terminal=True, width=width, color_system=None)
    render_rich(report, console, **options)
    return console.file.getvalue()


def test_plain_text_never_truncates():
    report = wide_report()
    text = render_text(report, verbose=True)
    assert "…" not in text and LONG in text
    for number in numbers(report):
        assert number in text, number
    assert "1.935e-08" in text and "8.631e-12" in text
    assert text.splitlines()[0].startswith("gradaudit FAIL: my_models.py:encoder on eager/cpu (float64)")
    assert "at node BadGeluBackward, op BadGelu, module encoder.layers.3.act, source model.py:41" in text


@pytest.mark.parametrize("width", [80, 60, 40])
def test_rich_table_keeps_numbers_whole(width):
    report = wide_report()
    text = rich_text(report, width, verbose=True)
    assert "…" not in text
    assert all(len(line) <= width for line in text.splitlines()[1:])  # (the verdict line is soft-wrapped)
    tokens = set(re.split(r"[\s,()]+", text))
    for number in numbers(report):
        assert number in tokens, (number, text)


def test_rich_table_folds_names_not_numbers_at_80_columns():
    text = rich_text(wide_report(), 80, verbose=True)
    assert "ord" in text and "error bar" in text  # the table, not the one-sentence fallback
    assert LONG not in text.splitlines()[3]  # the long name folds over several lines


def test_quiet_is_the_verdict_line_only():
    report = wide_report()
    assert render_text(report, quiet=True) == render_text(report).splitlines()[0]
    assert rich_text(report, 80, quiet=True).strip() == render_text(report, quiet=True)


def test_str_of_a_report_and_of_its_json_agree():
    report = wide_report()
    again = Report.from_dict(json.loads(report.to_json()))
    assert str(again) == str(report) and again.to_dict() == report.to_dict()
    assert Report.from_dict({"findings": [{"kind": "faulty_backward", "message": "m"}]}).ok is False


def test_piped_cli_prints_every_number_whole(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    path = tmp_path / "report.json"
    result = CliRunner(env={"COLUMNS": "80"}).invoke(main, ["run", "examples/bad_gelu.py:case", "--json", str(path)], catch_exceptions=False)
    assert result.exit_code == 1, result.output
    report = Report.from_dict(json.loads(path.read_text()))
    shown = [c for c in report.checks if c.status != "pass"]
    assert shown and "…" not in result.stdout
    for check in shown:
        for value in (check.max_abs_err, check.tolerance, check.analytical, check.numerical):
            assert fmt(value) in result.stdout, (fmt(value), result.stdout)
        assert check.wrt in result.stdout
