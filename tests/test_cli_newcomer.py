"""The command line as a newcomer meets it: the README's sample is what the command prints, progress shows in a
CI log, ``--static-only`` never says PASS, usage errors are one line, and names or messages from the user's code
cannot drive the terminal (escape sequences, fake lines, rich markup)."""
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from gradaudit.cli import output
from gradaudit.renderers.printable import printable, printable_tree

ROOT = Path(__file__).parent.parent
GRADAUDIT = str(Path(sys.executable).parent / "gradaudit")


def gradaudit(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([GRADAUDIT, *args], capture_output=True, text=True, timeout=300, cwd=cwd)


# ------------------------------------------------------------------------------------ the README
def readme_sample() -> tuple[list[str], list[str]]:
    """(the command, the lines) of the README's sample failure."""
    text = (ROOT / "README.md").read_text()
    block = text.split("A failing audit reads like a bug report", 1)[1].split("```", 2)[1]
    command, *lines = block.strip("\n").splitlines()
    assert command.startswith("$ gradaudit ")
    return command[len("$ gradaudit "):].split(), lines


NUMBER = r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?"
# Error bars are measured rounding noise: their digits differ between CPUs (2.67e-11 in the README, 2.63e-11 on
# an AMD EPYC), while a wrong sample is off by far more.
NUMBER_TOLERANCE = 0.1


def matches(sample: list[str], printed: str) -> bool:
    """Whether the printed text is the sample, a ``  ...`` line standing for any lines left out, each decimal
    number within NUMBER_TOLERANCE (relative) of the sample's, integers exactly."""
    def line_pattern(line: str) -> str:
        parts = re.split(f"({NUMBER})", line)
        return "".join(f"({NUMBER})" if i % 2 else re.escape(part) for i, part in enumerate(parts)) + r"\n"

    pattern = "".join(r"(?:.*\n)*?" if line.strip() == "..." else line_pattern(line) for line in sample)
    found = re.fullmatch(pattern, printed + "\n")
    if found is None:
        return False
    expected = [n for line in sample if line.strip() != "..." for n in re.findall(NUMBER, line)]
    return all(got == want if want.lstrip("+-").isdigit()  # (counts and indices exactly)
               else abs(float(got) - float(want)) <= NUMBER_TOLERANCE * abs(float(want))
               for got, want in zip(found.groups(), expected))


def test_the_readme_sample_failure_is_what_the_command_prints():
    args, sample = readme_sample()
    result = gradaudit(*args)
    assert result.returncode == 1, result.stderr
    assert matches(sample, result.stdout), result.stdout


def test_the_sample_matcher_can_fail():
    assert matches(["a", "  ...", "c"], "a\nb\nb\nc") and not matches(["a", "c"], "a\nb\nc")
    assert matches(["error bar 2.67e-11 [7]"], "error bar 2.63e-11 [7]")
    assert not matches(["error bar 2.67e-11 [7]"], "error bar 2.67e-10 [7]")
    assert not matches(["element [70]"], "element [71]")


# ------------------------------------------------------------------------------------ honest output
def test_plain_progress_lines_once_a_run_takes_long(capsys):
    quick = output.PlainProgress(after=60, every=0)
    quick.phase("the checks")
    quick.progress("order 1 wrt fc1.weight", 1, 3)
    assert capsys.readouterr().err == ""  # a quick run (or one failing at once) keeps its one line
    slow = output.PlainProgress(after=0, every=3600)
    slow.phase("the checks")
    for done in range(1, 10):  # throttled: a line was just printed (the phase), so only the last step
        slow.progress(f"order 1 wrt p{done}\x1b[2J", done, 9)
    slow.phase("localization")
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["gradaudit: [0 s] the checks", "gradaudit: [0 s] order 1 wrt p9\\x1b[2J (9/9)",
                     "gradaudit: [0 s] localization"]


def test_static_only_never_says_pass():
    result = gradaudit("run", "examples/bad_gelu.py:case", "--static-only")
    verdict = result.stdout.splitlines()[0]
    assert "PASS" not in result.stdout and "checks passed" not in result.stdout
    assert verdict.startswith("gradaudit NOT CHECKED:") and "no gradient was checked" in verdict
    assert result.returncode == 0  # no check failed, hazards are warnings (--fail-on-hazard makes them fail)


def test_usage_errors_are_one_line_and_exit_2():
    for args in (["run", "examples/bad_gelu.py:case", "--seed", "-1"],
                 ["suite", "torch.nn", "--seed", str(2 ** 64)], ["run", "--no-such-option"]):
        result = gradaudit(*args)
        assert result.returncode == 2 and "Usage:" not in result.stderr, (args, result.stderr)
        assert result.stderr.startswith("gradaudit: error: ") and result.stderr.count("\n") == 1, result.stderr


# ------------------------------------------------------------------------------------ hostile names and targets
HOSTILE = '''
import torch
from gradaudit.suite.zoos import ZooCase

NAME = "evil\\x1b[2J\\x1b]0;owned\\x07\\nFAKE: all passed"


def good():
    return torch.sin, (torch.linspace(-1, 1, 5, dtype=torch.float64),)


def raises():
    raise ValueError("boom \\x1b[31mred\\r\\nFAKE: all passed")


def interrupts():
    raise KeyboardInterrupt


def zoo():
    return [ZooCase(NAME, good), ZooCase("markup[/]x[bold]", raises)]


def zoo_interrupts():
    raise KeyboardInterrupt
'''


def hostile_zoo(tmp_path: Path) -> Path:
    path = tmp_path / "hostile.py"
    path.write_text(HOSTILE)
    return path


@pytest.mark.slow
def test_escape_sequences_and_newlines_in_names_never_reach_the_terminal(tmp_path):
    path = hostile_zoo(tmp_path)
    result = gradaudit("suite", f"{path}:zoo", "--orders", "1", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    everything = result.stdout + result.stderr
    assert "\x1b" not in everything and "\x07" not in everything and "\r" not in everything
    assert not any(line.startswith("FAKE") for line in everything.splitlines())
    assert "evil\\x1b[2J" in everything and "\\nFAKE: all passed" in everything
    assert "markup[/]x[bold]" in everything  # markup shown as text


def test_a_targets_message_is_escaped_in_the_error_line(tmp_path):
    path = hostile_zoo(tmp_path)
    result = gradaudit("run", f"{path}:raises", cwd=tmp_path)
    assert result.returncode == 2 and "\x1b" not in result.stderr and "\r" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("gradaudit: error:")]
    assert len(errors) == 1 and "boom \\x1b[31mred" in errors[0], result.stderr


@pytest.mark.slow
def test_a_keyboard_interrupt_the_user_raises_is_exit_2(tmp_path):
    path = hostile_zoo(tmp_path)
    result = gradaudit("suite", f"{path}:zoo_interrupts", cwd=tmp_path)
    assert result.returncode == 2 and "KeyboardInterrupt" in result.stderr, result.stderr
    assert gradaudit("run", f"{path}:interrupts", cwd=tmp_path).returncode == 2


def test_printable_escapes_controls_and_keeps_the_rest():
    assert printable("a\x1b[2Jb\nc\td\u202ee\x9b") == "a\\x1b[2Jb\\nc\td\\u202ee\\x9b"
    assert printable("GELU[tanh] ünïcode ✓") == "GELU[tanh] ünïcode ✓"
    assert printable_tree({"k\n": ["\x07", 3, None]}) == {"k\\n": ["\\x07", 3, None]}


def test_rich_markup_in_a_progress_description_cannot_crash_the_bar(monkeypatch):
    """The progress bar on a (forced) terminal, updated with a name holding rich markup."""
    screen = io.StringIO()
    import rich.console

    monkeypatch.setattr(rich.console, "Console", lambda **kw: Console(file=screen, force_terminal=True, width=100))
    with output.progress_bar(True) as update:
        update("order 1 wrt fc[/].weight[bold]", 1, 2)
    assert "fc[/].weight[bold]" in screen.getvalue()


# ------------------------------------------------------------------------------------ what the report says
def test_compare_says_what_is_compared_with_what():
    import fixtures
    import gradaudit
    from gradaudit.renderers.text import check_line, render_text

    report = gradaudit.compare(*fixtures.mlp(), backends=["eager"], localize=False)
    text = render_text(report, verbose=True)
    verdict = text.splitlines()[0]
    assert " on eager against eager/cpu/float64 (dtype as given), order 1" in verdict, verdict
    assert "(reference)" not in verdict and "(as given)," not in verdict
    assert "analytical|backend" in text and "numerical|reference" in text
    parity = next(c for c in report.checks if c.method == "backend_parity")
    assert ", eager " in check_line(parity) and " vs reference " in check_line(parity)


def test_leaves_covered_by_a_passing_total_say_so():
    import fixtures
    import gradaudit
    from gradaudit.renderers.text import render_text

    report = gradaudit.check(*fixtures.mlp(), localize=False)
    total = next(c for c in report.checks if c.wrt == "total")
    leaves = [line for line in render_text(report, verbose=True).splitlines()
              if "reverse" in line and line.split()[1] != "total"]
    covered = [line for line in leaves if "via total" in line]
    assert covered, leaves  # a passing aggregate covers (some of) its leaves
    assert not any(f"{total.max_abs_err:.4g}" in line and f"{total.tolerance:.4g}" in line for line in covered)


def test_notes_are_not_listed_as_skipped():
    from gradaudit.renderers.text import skipped_lines
    from gradaudit.report import Report

    report = Report.from_dict({"skipped": [{"what": "xla: torch.compile (inductor)", "reason": "2 graphs compiled",
                                            "note": True}, {"what": "forward-mode AD", "reason": "no jvp"}]})
    assert skipped_lines(report) == ["note xla: torch.compile (inductor): 2 graphs compiled",
                                     "skipped forward-mode AD: no jvp"]


def test_the_pytest_summary_line_names_the_first_finding():
    import fixtures
    from gradaudit.testing import GradientAssertionError, assert_gradients

    with pytest.raises(GradientAssertionError) as raised:
        assert_gradients(*fixtures.wrong_parameter_gradient(), localize=True)
    first = str(raised.value).splitlines()[0]  # what pytest's short summary shows
    assert first.startswith("wrong gradients: faulty_backward wrt fc2.bias at FnBackward (fixtures.py:"), first


def test_verbose_logs_each_phase_and_counts_in_words():
    result = gradaudit("run", "examples/bad_gelu.py:case", "-v")
    assert result.returncode == 1, result.stderr
    for phase in ("the checks", "localization", "hazard scan"):
        assert f"INFO gradaudit.cli: phase: {phase}" in result.stderr, result.stderr
    assert "FAIL, 6 checks, 1 finding\n" in result.stderr and "module -" not in result.stderr


def test_help_shows_the_dtype_configuration_sets():
    import os

    configured = subprocess.run([GRADAUDIT, "run", "--help"], capture_output=True, text=True, timeout=60,
                                env={**os.environ, "GRADAUDIT_DTYPE": "float32", "COLUMNS": "200"})
    assert "[default: float32, from configuration]" in configured.stdout and "keep" not in configured.stdout
    assert "(default: keep)" in gradaudit("run", "--help").stdout.replace("\n", " ").replace("  ", "")
