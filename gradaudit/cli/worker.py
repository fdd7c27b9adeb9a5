"""The audit behind ``gradaudit run`` and ``compare``, in a fresh process started by their supervisor
(``gradaudit.cli.supervisor``).

``python -P -m gradaudit.cli.worker FD`` reads one request on stdin (``{"command": "run" | "compare", "target":
..., "options": {keyword arguments of gradaudit.check / gradaudit.compare}, "verbosity": 0, "traceback": false}``),
loads the TARGET here, runs the audit, and tells the supervisor what happens as JSON lines on file descriptor FD:

* ``{"event": "phase", "name": "checks"}``: a phase starts (the supervisor starts its clock);
* ``{"event": "progress", "what": ..., "done": 3, "total": 9}``;
* ``{"event": "verdict", "report": {...}}``: the checks are done; optional phases follow;
* ``{"event": "done", "report": {...}}``: the complete report;
* ``{"event": "error", "message": "one line"}``: the audit could not run (exit 2).

Nothing else is written on FD, so the user's prints (on this process's stdout, which the supervisor points at
its stderr) can never be mistaken for a report.
"""
from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Any

from gradaudit import log
from gradaudit.outcome import error_line, exits_raise
from gradaudit.pipeline import Listener, listening


class Channel(Listener):
    """The events of the audit, as JSON lines on the supervisor's pipe."""

    def __init__(self, fd: int) -> None:
        self._stream = os.fdopen(fd, "w", encoding="utf-8")

    def send(self, event: str, **fields: Any) -> None:
        self._stream.write(json.dumps({"event": event, **fields}) + "\n")
        self._stream.flush()

    def phase(self, name: str) -> None:
        self.send("phase", name=name)

    def verdict(self, report: Any) -> None:
        self.send("verdict", report=report.to_dict())

    def progress(self, what: str, done: int, total: int) -> None:
        self.send("progress", what=what, done=done, total=total)


def audit(request: dict, channel: Channel) -> tuple[Any, dict]:
    """Load the target and run the requested audit: its report, and what else the command needs (``graph``:
    the lines to print once the graph is written, or nothing where graph export gave nothing)."""
    from gradaudit import api
    from gradaudit.cli.common import load_case

    graph_file = request.get("graph")
    if graph_file:
        from gradaudit.cli.graph import checked_format

        graph_file["format"] = checked_format(graph_file["out"], graph_file["format"])
    channel.phase("the loading of the target")
    case = load_case(request["target"])
    run = api.compare if request["command"] == "compare" else api.check
    report = run(case, progress=channel.progress, **request["options"])
    if not graph_file:
        return report, {}
    from gradaudit.cli.graph import draw, write_drawn
    from gradaudit.pipeline import optional_phase

    drawn = optional_phase("graph export", lambda: draw(case, report, request["options"]["seed"]), report.skipped)
    return report, ({"graph": write_drawn(case, report, drawn, graph_file)} if drawn else {})


def main() -> None:
    channel = Channel(int(sys.argv[1]))
    _die_with_supervisor()
    request = json.loads(sys.stdin.read())
    # The command's own import path (what a caller of gradaudit.cli.main added to sys.path included); the
    # working directory only where the command had it (-P left it out here).
    sys.path[:0] = [entry for entry in request.get("sys_path", []) if entry not in sys.path]
    log.configure(request.get("verbosity", 0))
    with listening(channel), exits_raise():
        try:
            report, more = audit(request, channel)
        except BaseException as exc:  # noqa: B036 - the user's code may raise anything, SystemExit included
            if request.get("traceback"):
                traceback.print_exception(exc)
            channel.send("error", message=error_line(exc, request.get("traceback", False)))
            return
    channel.send("done", report=report.to_dict(), **more)


def _die_with_supervisor() -> None:
    """On Linux, end this worker when its supervisor ends, however it ends (even SIGKILL): no orphan audits."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # the supervisor was already gone before prctl took effect
        os._exit(2)


if __name__ == "__main__":
    main()
