"""The ``gradaudit`` logger, and how loud other libraries may be while gradaudit drives them.

The library only logs (``logging.getLogger("gradaudit.<module>")``) and never installs handlers: an application
that embeds gradaudit decides where its records go. The command line calls :func:`configure` once per command:
``-q`` shows errors only, no flag warnings, ``-v`` info, ``-vv`` debug, all on stderr (stdout may carry a JSON
report). Other libraries' chatter (torch-xla's precision warnings, the ONNX exporter's logs) is silenced around
the calls that cause it with :func:`quiet_loggers`, unless gradaudit itself logs at debug level (``-vv``).
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

import click

LOGGER_NAME = "gradaudit"
_LEVELS = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}


class _StderrHandler(logging.Handler):
    """Writes each record to whatever ``sys.stderr`` is at the time (a test runner swaps it per invocation)."""

    def emit(self, record: logging.LogRecord) -> None:
        """One formatted line on the current stderr."""
        try:
            click.echo(self.format(record), err=True)
        except OSError:  # stderr is gone: logging must never change how a command ends
            pass


_handler = _StderrHandler()
_handler.setFormatter(logging.Formatter("[%(relativeCreated)7.0f ms] %(levelname)s %(name)s: %(message)s"))


def configure(verbosity: int) -> None:
    """Route the ``gradaudit`` logger to stderr at the level of ``verbosity`` (-1 ``-q``: errors; 0: warnings;
    1 ``-v``: info; 2 or more ``-vv``: debug). For the command line; calling it again replaces the level."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(_LEVELS[max(-1, min(2, verbosity))])
    if _handler not in logger.handlers:
        logger.addHandler(_handler)
    logger.propagate = False  # one line per record, whatever handlers the root logger has


def debugging() -> bool:
    """True when gradaudit logs at debug level (``-vv``): then nobody else's output is hidden either."""
    return logging.getLogger(LOGGER_NAME).isEnabledFor(logging.DEBUG)


@contextmanager
def quiet_loggers(*names: str, level: int = logging.ERROR) -> Iterator[bool]:
    """Raise the named loggers to ``level`` while inside (restored on leaving), unless :func:`debugging`.
    Yields whether it silenced them, so that a caller hiding more (warnings, prints) can follow suit."""
    if debugging():
        yield False
        return
    loggers = [logging.getLogger(name) for name in names]
    saved = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(level)
    try:
        yield True
    finally:
        for logger, old in zip(loggers, saved):
            logger.setLevel(old)
