"""Suites against hostile results directories, records, report paths, working directories and Ray addresses: each
is one line on stderr and exit 2 (or a warning and the job run again), never a traceback, an exit 1 or a leak."""
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gradaudit.renderers.html import write_html

DATA = Path(__file__).parent / "data"
ZOO = f"{DATA / 'suite_zoo.py'}:zoo"
GRADAUDIT = str(Path(sys.executable).parent / "gradaudit")  # the console script: no cwd on its sys.path
IS_ROOT = os.geteuid() == 0


def suite(*args: str, cwd: Path | None = None, file_limit: int | None = None) -> subprocess.CompletedProcess:
    """``gradaudit suite`` in a real process (``file_limit``: the largest file, in bytes, it may write)."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))
    return subprocess.run([GRADAUDIT, "suite", *args], capture_output=True, text=True, timeout=120, cwd=cwd,
                          preexec_fn=limit if file_limit is not None else None)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The run's stderr, asserted to be exit 2 with exactly one ``gradaudit: error:`` line and no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("gradaudit: error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


@pytest.fixture(scope="module")
def stored(tmp_path_factory) -> Path:
    """A results directory holding the order-1 records of the zoo's good and faulty cases."""
    results = tmp_path_factory.mktemp("stored") / "results"
    result = suite(ZOO, "--only", "good,faulty", "--orders", "1", "--results-dir", str(results), "-q")
    assert result.returncode == 1, result.stderr  # faulty fails
    assert len(list(results.glob("*.json"))) == 2
    return results


def copy_of(stored: Path, tmp_path: Path) -> Path:
    results = tmp_path / "results"
    shutil.copytree(stored, results)
    return results


def record_file(results: Path, case: str, order: int = 1) -> Path:
    (path,) = results.glob(f"{case}-eager-o{order}-*.json")
    return path


# ------------------------------------------------------------------------------------ the results directory
def test_a_file_where_the_results_directory_goes(tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("not a directory")
    line = one_error_line(suite(ZOO, "--only", "good", "--results-dir", str(blocker)))
    assert "--results-dir" in line and str(blocker) in line


@pytest.mark.skipif(IS_ROOT, reason="root writes into read-only directories; the file-size test covers a full disk")
def test_a_read_only_results_directory(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    results.chmod(0o500)
    try:
        line = one_error_line(suite(ZOO, "--only", "good", "--results-dir", str(results)))
    finally:
        results.chmod(0o700)
    assert "cannot write to results directory" in line


@pytest.mark.slow
def test_a_full_disk_while_storing_a_record(tmp_path):
    """RLIMIT_FSIZE makes every write past 64 bytes fail (EFBIG), as a full disk would, for root too."""
    results = tmp_path / "results"
    line = one_error_line(suite(ZOO, "--only", "good", "--orders", "1", "--results-dir", str(results),
                                file_limit=64))
    assert "cannot store a record in" in line and str(results) in line
    assert not [p for p in results.iterdir() if p.name.endswith(".tmp")]  # no temporary file left behind


@pytest.mark.slow
def test_a_directory_where_a_record_goes(stored, tmp_path):
    results = copy_of(stored, tmp_path)
    record = record_file(results, "good")
    record.unlink()
    record.mkdir()
    line = one_error_line(suite(ZOO, "--only", "good", "--orders", "1", "--results-dir", str(results)))
    assert f"cannot store a record in {record}" in line


@pytest.mark.slow
def test_damaged_and_tampered_records_are_run_again_with_a_warning(stored, tmp_path):
    results = copy_of(stored, tmp_path)
    record_file(results, "good").write_bytes(b"\xff\xfe{not utf-8 \x80")
    tampered = record_file(results, "faulty")
    document = json.loads(tampered.read_text())
    document["record"]["case"] = "someone else"
    tampered.write_text(json.dumps(document))
    out = tmp_path / "all.json"
    result = suite(ZOO, "--only", "good,faulty", "--orders", "1", "--results-dir", str(results),
                   "--json", str(out))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "ignoring stored record" in line]
    assert len(warnings) == 2 and any("holds the record of" in line for line in warnings), result.stderr
    records = {r["case"]: r for r in json.loads(out.read_text())["records"]}
    assert set(records) == {"good", "faulty"}  # no job vanished
    assert records["good"]["status"] == "pass" and records["faulty"]["status"] == "fail"
    assert not any(r.get("resumed") for r in records.values())  # both ran again
    assert json.loads(tampered.read_text())["record"]["case"] == "faulty"  # and were stored afresh


# ------------------------------------------------------------------------------------ reports
def test_a_failed_report_write_keeps_the_old_report_and_names_the_file(stored, tmp_path):
    results = copy_of(stored, tmp_path)
    report = tmp_path / "report.html"
    report.write_text("the earlier report")
    line = one_error_line(suite(ZOO, "--only", "good,faulty", "--orders", "1", "--results-dir", str(results), "--html",
                                str(report), file_limit=4096))  # the records are stored: only the page is big
    assert f"cannot write {report}" in line and "stdout" not in line
    assert report.read_text() == "the earlier report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "results"]  # no .tmp left


def failing_record(graph_svg: str) -> dict:
    finding = {"kind": "faulty_backward", "message": "m", "node": "FnBackward", "details": {"graph_svg": graph_svg}}
    return {"case": "c", "backend": "eager", "order": 1, "status": "fail", "reason": "r", "seconds": 1,
            "report": {"ok": False, "checks": [], "findings": [finding]}}


SVG = '<svg xmlns="http://www.w3.org/2000/svg"><text>FnBackward</text></svg>'


def test_the_html_report_never_inlines_files_outside_its_folders(tmp_path):
    secret = Path("/etc/passwd").read_text()[:20]
    (tmp_path / "link.svg").symlink_to("/etc/passwd")  # inside the folder by name, outside by target
    (tmp_path / "notes.txt").write_text("private notes")
    (tmp_path / "graph.svg").write_text(SVG)
    for named in ("/etc/passwd", "link.svg", "notes.txt", "../../etc/passwd"):
        page = write_html([failing_record(named)], tmp_path / "report.html").read_text()
        assert "data:image/svg+xml" not in page and secret not in page and "private notes" not in page, named
        assert named in page and "not embedded" in page or "not found" in page
    page = write_html([failing_record("graph.svg")], tmp_path / "report.html").read_text()
    assert "data:image/svg+xml;base64," in page  # an SVG in the report's own folder is embedded


# ------------------------------------------------------------------------------------ workers and executors
@pytest.mark.slow
def test_a_json_py_in_the_working_directory_never_runs_in_a_worker(tmp_path):
    marker = tmp_path / "json_py_ran"
    (tmp_path / "json.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nraise SystemExit('hijacked')\n")
    shutil.copy(DATA / "suite_zoo.py", tmp_path / "cwd_zoo.py")
    out = tmp_path / "out.json"
    # the zoo as a dotted module of the working directory: TARGET imports still resolve from it
    result = suite("cwd_zoo:zoo", "--only", "good", "--orders", "1", "--json", str(out), cwd=tmp_path)
    assert not marker.exists(), result.stderr
    assert result.returncode == 0, result.stderr
    assert [r["status"] for r in json.loads(out.read_text())["records"]] == ["pass"]


@pytest.mark.parametrize("address", ["127.0.0.1:1", "ray://127.0.0.1:1"])
def test_an_unreachable_ray_address_is_one_line_within_seconds(address):
    started = time.monotonic()
    line = one_error_line(suite(ZOO, "--executor", "ray", "--address", address))
    assert time.monotonic() - started < 30
    assert address in line


def test_a_ray_address_without_a_port_is_refused_at_once():
    from gradaudit.errors import AuditError
    from gradaudit.suite.executors import check_ray_address

    with pytest.raises(AuditError, match="expected host:port"):
        check_ray_address("no-port")
    check_ray_address("auto")  # left to Ray


@pytest.mark.parametrize("answer", [b"HTTP/1.0 400 Bad Request\r\n\r\n", b""])
def test_an_address_where_something_else_listens_is_not_taken_for_ray(answer):
    """A web server, or a port that accepts and says nothing: Ray would retry it for many minutes."""
    import socket
    import threading

    from gradaudit.errors import AuditError
    from gradaudit.suite.executors import check_ray_address

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve_once():
        connection, _ = server.accept()
        with connection:
            connection.recv(64)
            if answer:
                connection.sendall(answer)
            time.sleep(2)

    threading.Thread(target=serve_once, daemon=True).start()
    started = time.monotonic()
    with pytest.raises(AuditError, match="is not a Ray address"):
        check_ray_address(f"127.0.0.1:{port}", seconds=1.0)
    assert time.monotonic() - started < 10
    server.close()
