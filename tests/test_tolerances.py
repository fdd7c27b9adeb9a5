"""User tolerances (--rtol/--atol, rtol=/atol=): approximate gradients (an adjoint method's, an estimator's) pass
within the user's tolerance, each check says which bound judged it, every failure prints its relative error, and
a real fault still fails under a loose but sane tolerance. Planted faults: a custom Function whose backward (and
JVP) is off by a chosen relative amount, as the adjoint method's gradient is off from exact backprop.

The functions ``approximate`` and ``planted`` below are also TARGETs for the command line."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gradaudit
from gradaudit.testing import GradientAssertionError

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
HERE = "tests/test_tolerances.py"
ADJOINT_ERROR = 5e-7  # torchdiffeq's odeint_adjoint differs from exact backprop by about this much


def wobbly_sin(relative: float):
    """``sin`` whose backward and JVP are off by up to ``relative`` (varying from element to element, as a
    numerical integrator's error does), not by a constant factor."""

    def off(x: torch.Tensor) -> torch.Tensor:
        return torch.cos(x) * (1 + relative * torch.cos(7 * x + 1))

    class WobblySin(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            ctx.save_for_forward(x)
            return torch.sin(x)

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return grad * off(x)

        @staticmethod
        def jvp(ctx, tangent):
            (x,) = ctx.saved_tensors
            return tangent * off(x)

    return WobblySin.apply


class Net(torch.nn.Module):
    def __init__(self, relative: float):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.fc = torch.nn.Linear(5, 4).double()
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(4, 5, generator=generator, dtype=torch.float64))
            self.fc.bias.copy_(torch.randn(4, generator=generator, dtype=torch.float64))
        self.act = wobbly_sin(relative)

    def forward(self, x):
        return self.act(self.fc(x))


def inputs() -> tuple[torch.Tensor]:
    return (torch.randn(3, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64),)


def approximate():
    """A TARGET: gradients off by a relative 5e-7, as an adjoint ODE solver's."""
    return Net(ADJOINT_ERROR), inputs()


def planted():
    """A TARGET: a 10 % error, a real fault."""
    return Net(0.1), inputs()


def gradaudit_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "gradaudit", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=None if env is None else {**os.environ, **env})


# ------------------------------------------------------------------------------------------ the Python API
def test_approximate_gradient_fails_without_a_tolerance_and_says_how_far_off_relatively():
    report = gradaudit.check(*approximate(), localize=False)
    assert not report.ok
    finding = report.findings[0]
    assert finding.kind == "faulty_backward" and "relative error" in finding.message
    relative = finding.details["relative_error"]
    # The planted 5e-7 per Jacobian entry, seen at the worst element of a gradient (under a random cotangent, whose
    # sum over the outputs may cancel: larger relative errors than the entries' own, below 1e-3 here).
    assert 1e-8 < relative < 1e-3
    assert f"{relative:.3g}" in finding.message
    assert all(c.bound == "error_bar" and c.user_tolerance is None for c in report.checks)
    assert "rel. err" in str(report)


def test_approximate_gradient_passes_within_rtol_and_the_report_says_which_bound_applied():
    report = gradaudit.check(*approximate(), rtol=1e-5, localize=False)
    assert report.ok, report
    assert report.settings["rtol"] == 1e-5 and report.settings["atol"] == 0.0
    accepted = {(c.order, c.wrt, c.method): c for c in report.checks if c.bound == "user_tolerance"}
    failing = {(c.order, c.wrt, c.method) for c in gradaudit.check(*approximate(), localize=False).failed_checks}
    assert accepted and set(accepted) == failing  # the checks the error bar alone fails, and only those
    for check in accepted.values():
        assert check.max_abs_err <= check.user_tolerance  # the worst test, within the user's tolerance
        assert 1e-9 < check.user_rel_err < 1e-5  # the planted 5e-7, relative to what rtol multiplies
    text = str(report)
    assert "passed within --rtol 1e-05" in text and "relative" in text
    assert report.to_dict()["checks"][0]["bound"] in ("error_bar", "user_tolerance")


def test_forward_mode_and_full_jacobians_take_the_tolerance_too():
    for mode in ("auto", "full"):
        report = gradaudit.check(*approximate(), mode=mode, rtol=1e-5, localize=False)
        assert report.ok, (mode, report)
        methods = {c.method for c in report.checks if c.bound == "user_tolerance"}
        assert methods >= ({"reverse", "forward"} if mode == "auto" else {"full_jacobian"}), (mode, methods)
        assert not gradaudit.check(*approximate(), mode=mode, localize=False).ok


def test_a_check_within_its_error_bar_says_so_whatever_the_tolerance():
    correct = Net(0.0), inputs()
    plain = gradaudit.check(*correct, order=2, localize=False)
    loose = gradaudit.check(*correct, order=2, localize=False, rtol=1e-3, atol=1e-6)
    assert plain.ok and loose.ok
    assert {c.bound for c in loose.checks} == {"error_bar"}  # the tolerance was not needed
    assert [(c.wrt, c.method, c.ok) for c in loose.checks] == [(c.wrt, c.method, c.ok) for c in plain.checks]
    assert "passed within" not in str(loose)


def test_a_tolerance_that_is_too_tight_still_fails():
    report = gradaudit.check(*approximate(), rtol=1e-8, localize=False)
    assert not report.ok
    assert "--rtol/--atol allow" in report.findings[0].message


def test_atol_alone_accepts_the_approximate_gradient():
    assert gradaudit.check(*approximate(), atol=1e-5, localize=False).ok


def test_a_real_fault_still_fails_with_a_loose_but_sane_rtol():
    report = gradaudit.check(*planted(), rtol=1e-3, localize=False)
    assert not report.ok
    finding = report.findings[0]
    assert finding.kind == "faulty_backward"
    assert finding.details["relative_error"] > 1e-2 and "relative error" in finding.message
    assert "on --rtol's scale" in finding.message and "--rtol/--atol allow" in finding.message
    failing = [c for c in report.checks if not c.ok]
    assert failing and all(c.user_tolerance is not None and c.max_abs_err > c.user_tolerance for c in failing)


@pytest.mark.parametrize("bad", [{"rtol": -1}, {"atol": float("nan")}, {"rtol": float("inf")}, {"atol": "1e-5"}])
def test_bad_tolerances_are_refused(bad):
    with pytest.raises(gradaudit.AuditError, match="must be a finite number >= 0"):
        gradaudit.check(*approximate(), **bad)


def test_compare_takes_and_reports_the_tolerance():
    report = gradaudit.compare(*approximate(), backends=("eager",), rtol=1e-5, localize=False)
    assert report.ok and report.settings["rtol"] == 1e-5
    with pytest.raises(gradaudit.AuditError):
        gradaudit.compare(*approximate(), backends=("eager",), atol=-1.0)


# ------------------------------------------------------------------------------------------ the pytest plugin
@pytest.mark.gradaudit(rtol=1e-5, localize=False)
def test_marker_rtol_accepts_the_approximate_gradient(gradaudit):
    report = gradaudit(*approximate())
    assert any(c.bound == "user_tolerance" for c in report.checks)


@pytest.mark.gradaudit(localize=False)
def test_without_the_marker_rtol_the_fixture_fails_with_the_relative_error(gradaudit):
    with pytest.raises(GradientAssertionError, match="relative error"):
        gradaudit(*approximate())


INI_TESTS = """
import test_tolerances


def test_approximate(gradaudit):
    gradaudit(*test_tolerances.approximate(), localize=False)
"""


@pytest.mark.slow  # an inner pytest session: ~10 s on the shared CPU
def test_ini_rtol_is_the_fixtures_project_default(pytester):
    pytester.makepyfile(test_ini=INI_TESTS)
    pytester.makeini("[pytest]\ngradaudit_rtol = 1e-5\n")
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)  # (it fails without: tests above)
    pytester.makeini("[pytest]\ngradaudit_atol = lots\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert "gradaudit_atol must be a number" in result.stdout.str() + result.stderr.str()


# ------------------------------------------------------------------------------------------ the command line
def test_cli_run_fails_without_rtol_giving_the_relative_error():
    without = gradaudit_cli("run", f"{HERE}:approximate", "--no-localize")
    assert without.returncode == 1, without.stderr
    assert "relative error" in without.stdout and "rel. err" in without.stdout


def test_cli_run_passes_with_rtol_giving_the_relative_error_and_the_bound():
    within = gradaudit_cli("run", f"{HERE}:approximate", "--no-localize", "--rtol", "1e-5", "--json", "-")
    assert within.returncode == 0, within.stderr
    report = json.loads(within.stdout)
    assert report["settings"]["rtol"] == 1e-5
    accepted = [c for c in report["checks"] if c["bound"] == "user_tolerance"]
    assert accepted and all(c["user_rel_err"] < 1e-5 for c in accepted)
    assert "passed within --rtol 1e-05" in within.stderr and "relative" in within.stderr  # (text on stderr)


def test_cli_planted_fault_fails_with_rtol_and_the_environment_sets_it():
    result = gradaudit_cli("run", f"{HERE}:planted", "--no-localize", env={"GRADAUDIT_RTOL": "1e-3"})
    assert result.returncode == 1 and "relative error" in result.stdout and "--rtol/--atol allow" in result.stdout


@pytest.mark.parametrize("args, env", [(["--rtol", "-1"], None), (["--atol", "nan"], None),
                                       ([], {"GRADAUDIT_ATOL": "-1e-3"})])
def test_cli_bad_tolerance_is_one_line_and_exit_2(args, env):
    result = gradaudit_cli("run", f"{HERE}:approximate", *args, env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "must be a finite number >= 0" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow  # a compare worker (~10 s on the shared CPU)
def test_cli_compare_carries_the_tolerance_into_its_worker():
    result = gradaudit_cli("compare", f"{HERE}:approximate", "--backends", "eager", "--no-localize", "--rtol",
                           "1e-5", "--atol", "1e-12", "--json", "-")
    assert result.returncode == 0, result.stderr
    settings = json.loads(result.stdout)["settings"]
    assert settings["rtol"] == 1e-5 and settings["atol"] == 1e-12


def test_pyproject_sets_the_tolerance_and_refuses_a_bad_one(tmp_path):
    from gradaudit import config
    from gradaudit.cli.main import main

    (tmp_path / "pyproject.toml").write_text("[tool.gradaudit]\nrtol = 1e-5\n[tool.gradaudit.compare]\natol = 1e-9\n")
    assert config.default_map(main, "run", cwd=tmp_path, environ={}) == {"rtol": 1e-5}
    assert config.default_map(main, "compare", cwd=tmp_path, environ={}) == {"rtol": 1e-5, "atol": 1e-9}
    assert config.default_map(main, "suite", cwd=tmp_path, environ={}) == {"rtol": 1e-5}
    (tmp_path / "pyproject.toml").write_text("[tool.gradaudit.run]\natol = -0.1\n")
    with pytest.raises(config.ConfigError, match=r"\[tool.gradaudit.run\]: atol = -0.1: --atol must be a finite"):
        config.default_map(main, "run", cwd=tmp_path, environ={})


def test_cli_compare_refuses_a_bad_tolerance_in_one_line():
    result = gradaudit_cli("compare", f"{HERE}:approximate", "--backends", "eager", "--rtol", "-0.5")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------ suites
def zoo():
    """A zoo (``tests/test_tolerances.py:zoo``) of the approximate case, at order 1."""
    from gradaudit.suite.zoos import ZooCase

    return [ZooCase("approximate", approximate, orders=(1,))]


@pytest.mark.slow  # three worker processes (~12 s each on the shared 2-core CPU)
def test_suite_passes_the_tolerance_to_its_workers_and_keys_records_by_it(tmp_path):
    from gradaudit.suite.runner import run_suite

    def audit(**tolerance):
        return run_suite(f"{HERE}:zoo", ["eager"], [1], executor="serial", results_dir=tmp_path, **tolerance)[0]

    assert audit(rtol=1e-5)["status"] == "pass"
    assert audit()["status"] == "fail"  # (not the stored pass: the tolerance is part of the record's key)
    assert audit(rtol=1e-5).get("resumed")
    with pytest.raises(gradaudit.AuditError, match="rtol must be a finite number"):
        run_suite(f"{HERE}:zoo", ["eager"], [1], rtol=-1.0)
