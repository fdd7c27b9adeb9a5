"""Exit codes and what a command prints when it stops: ``0`` every check passed, ``1`` a gradient problem was
found, ``2`` the audit could not run (one line on stderr), ``130`` interrupted (Ctrl-C), ``143`` terminated
(SIGTERM).

* :func:`command_outcome` wraps what a command runs before it has a verdict: ``AuditError``, ``SystemExit`` of
  the target and any other escape become one line on stderr and exit 2 (``--traceback`` only adds the
  traceback); Ctrl-C is exit 130.
* Output: :func:`check_output_path` refuses unwritable paths before the audit starts, :func:`write_outputs` turns
  write errors into exit 2 and a closed pipe on stdout into silence (the audit's own exit code stands).
"""
from __future__ import annotations

import errno
import os
import signal
import sys
import threading
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, NoReturn

import click

from gradaudit.errors import AuditError
from gradaudit.outcome import error_line, exits_raise
from gradaudit.renderers.printable import printable

EXIT_OK, EXIT_PROBLEM, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143


def _echo_err(message: str) -> None:
    try:
        click.echo(message, err=True)
    except OSError:  # stderr itself is gone: the exit code still says it
        pass


def fail(message: str) -> NoReturn:
    """Exit 2 with one line on stderr (control characters of the message, often the user's, escaped)."""
    _echo_err(f"gradaudit: error: {printable(message)}")
    sys.exit(EXIT_ERROR)


def interrupted(message: str = "interrupted", code: int = EXIT_INTERRUPTED) -> NoReturn:
    """Exit 130 (Ctrl-C; 143 for SIGTERM) with one line on stderr and no verdict."""
    _echo_err(f"gradaudit: {printable(message)}")
    sys.exit(code)


@contextmanager
def command_outcome(show_traceback: bool = False) -> Iterator[None]:
    """Wrap what a command runs before it has a verdict (loading the target, the audit): any escape is exit 2
    with one line (the traceback first with ``--traceback``, the exit code unchanged), Ctrl-C is exit 130.
    Nothing inside may call ``sys.exit`` for gradaudit: a ``SystemExit`` here is the target's."""
    with exits_raise():
        try:
            yield
        except KeyboardInterrupt:
            interrupted()
        except BaseException as exc:  # noqa: B036 - the user's code may raise anything, SystemExit included
            if show_traceback:
                traceback.print_exception(exc)
            fail(error_line(exc, show_traceback))


class Interrupts(threading.Event):
    """Set when SIGINT or SIGTERM really arrived; ``terminated`` says it was SIGTERM (exit 143, not 130)."""

    terminated = False

    @property
    def exit_code(self) -> int:
        return EXIT_TERMINATED if self.terminated else EXIT_INTERRUPTED


@contextmanager
def real_interrupts() -> Iterator[Interrupts]:
    """Set when SIGINT really arrives while inside (Ctrl-C still raises KeyboardInterrupt), so that a
    ``KeyboardInterrupt`` the user's code raises itself can be told from it: that one is exit 2, not 130.
    SIGTERM (CI cancellation, ``timeout``) stops the same way, so finished work is still reported (exit 143)."""
    seen = Interrupts()

    def on_signal(signum: int, frame: Any) -> None:
        seen.terminated = seen.terminated or signum == signal.SIGTERM
        seen.set()
        raise KeyboardInterrupt

    try:
        previous = {number: signal.signal(number, on_signal) for number in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: every KeyboardInterrupt counts as real
        seen.set()
        yield seen
        return
    try:
        yield seen
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


class InterruptibleGroup(click.Group):
    """A click group whose commands exit 130 with one line on Ctrl-C (click's own answer is "Aborted!" and
    exit 1, which reads like a verdict), and whose usage errors (a bad option value, ``--seed -1``) are one
    ``gradaudit: error:`` line and exit 2, not click's usage text."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            interrupted()
        except click.UsageError as exc:
            command = exc.ctx.command_path if exc.ctx is not None else ctx.command_path
            fail(f"{exc.format_message()} (see {command} --help)")


# ------------------------------------------------------------------------------------------ output
def check_output_path(path: str | None, option: str) -> None:
    """Refuse, before any work, a file the command could not write: its directory is missing, it is a
    directory, or it is not writable. ``-`` (stdout) and None pass."""
    if not path or path == "-":
        return
    target = Path(path)
    if target.is_dir():
        raise AuditError(f"{option} {path}: is a directory")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise AuditError(f"{option} {path}: no such directory {parent}")
    if not os.access(parent, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise AuditError(f"{option} {path}: permission denied")


def _silence_stdout() -> None:
    """Point fd 1 at /dev/null, so that the interpreter's last flush of what stayed buffered cannot fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # not a real file (a test runner's buffer): nothing to flush
        pass


@contextmanager
def write_outputs(exit_code: int, leave: bool = True) -> Iterator[None]:
    """Wrap everything a command writes once it has a verdict, then leave with ``exit_code`` (go on instead
    where ``leave`` is false: the verdict written before the optional phases). A reader that went away
    (``| head``) is no error: silence, and the verdict's exit code. Any other write error (a full disk,
    ``/dev/full``) is one line and exit 2."""
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        sys.exit(exit_code)
    except OSError as exc:
        if exc.errno == errno.EPIPE:
            _silence_stdout()
            sys.exit(exit_code)
        _silence_stdout()
        where = f" {exc.filename}" if exc.filename else " the report to stdout"
        fail(f"cannot write{where}: {exc.strerror or exc}")
    if leave:
        sys.exit(exit_code)


def write_text_file(path: str, text: str) -> None:
    """Write a report file atomically (a reader sees the old file or the new one, never a part; a failed
    write leaves the old one and no temporary file); an OSError names ``path`` and becomes one line and exit 2
    (through :func:`write_outputs`)."""
    from gradaudit.renderers import write_text

    write_text(path, text)
