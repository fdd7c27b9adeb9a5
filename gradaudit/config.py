"""Option defaults from configuration: ``[tool.gradaudit]`` in the nearest ``pyproject.toml`` and ``GRADAUDIT_*``
environment variables.

A key is a long option name without its dashes (``seed``, ``backend``, ``no-localize``; ``no_localize`` works
too), and it sets that option's default for every command that has the option. ``[tool.gradaudit.run]``,
``[tool.gradaudit.suite]``, ... hold keys for one command, over the top-level ones. ``GRADAUDIT_SEED=3``,
``GRADAUDIT_NO_LOCALIZE=1`` (the key in capitals, ``-`` as ``_``) come next, and the command line wins over all:
command line > environment > ``[tool.gradaudit.<command>]`` > ``[tool.gradaudit]`` > built-in default.

``pyproject.toml`` is the first found from the working directory upward. An unknown key, or a value the option's
type refuses, is a :class:`ConfigError` naming the key and where it was set. Environment variables that name no
option of the command are ignored (``GRADAUDIT_NO_FORK`` and friends are not options).
"""
from __future__ import annotations

import difflib
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import click

from gradaudit.errors import AuditError

ENV_PREFIX = "GRADAUDIT_"


class ConfigError(AuditError):
    """A configuration key gradaudit does not know, or a value its option refuses."""


@dataclass(frozen=True)
class Setting:
    """One configured option default: the key as written, its value, and where it was set."""

    key: str
    value: Any
    source: str


def find_pyproject(start: Path) -> Path | None:
    """The nearest ``pyproject.toml`` in ``start`` or a folder above it."""
    for folder in (start, *start.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def read_table(path: Path) -> dict[str, Any]:
    """The ``[tool.gradaudit]`` table of a ``pyproject.toml`` (empty when it has none)."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it: {exc}") from None
    table = document.get("tool", {}).get("gradaudit", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: tool.gradaudit must be a table, not {type(table).__name__}")
    return table


def option_keys(command: click.Command) -> dict[str, click.Option]:
    """Configuration key -> option, for every long option of ``command`` (``--no-localize`` -> ``no-localize``)."""
    return {opt[2:]: param for param in command.params if isinstance(param, click.Option)
            for opt in param.opts if opt.startswith("--")}


def _unknown(key: str, known: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"{where}: unknown key {key!r}{hint}")


def pyproject_settings(group: click.Group, name: str, path: Path) -> list[Setting]:
    """The settings of ``path`` for command ``name``, top-level keys first; every key of the file is checked
    against the group's commands (an unknown key or command is an error even when another command runs)."""
    table = read_table(path)
    commands = {command_name: option_keys(command) for command_name, command in group.commands.items()}
    every_key = sorted({key for keys in commands.values() for key in keys})
    top, per_command = [], []
    for raw_key, value in table.items():
        key = raw_key.replace("_", "-")
        if isinstance(value, dict):
            if raw_key not in commands:
                raise _unknown(raw_key, sorted(commands), f"{path} [tool.gradaudit]")
            where = f"{path} [tool.gradaudit.{raw_key}]"
            for sub_key, sub_value in value.items():
                if sub_key.replace("_", "-") not in commands[raw_key]:
                    raise _unknown(sub_key, sorted(commands[raw_key]), where)
                if raw_key == name:
                    per_command.append(Setting(sub_key.replace("_", "-"), sub_value, where))
        elif key not in every_key:
            raise _unknown(raw_key, every_key, f"{path} [tool.gradaudit]")
        elif key in commands.get(name, {}):
            top.append(Setting(key, value, f"{path} [tool.gradaudit]"))
    return top + per_command


def environment_settings(command: click.Command, environ: Mapping[str, str]) -> list[Setting]:
    """``GRADAUDIT_<KEY>`` variables that name an option of ``command`` (empty ones count as unset)."""
    settings = []
    for key in option_keys(command):
        variable = ENV_PREFIX + key.upper().replace("-", "_")
        if environ.get(variable, ""):
            settings.append(Setting(key, environ[variable], variable))
    return settings


def _convert(option: click.Option, setting: Setting, ctx: click.Context) -> Any:
    """The value as the option's own type reads it; a list of strings is a comma-separated option's value."""
    value = setting.value
    if isinstance(value, list) and all(isinstance(item, str) for item in value) and option.type == click.STRING:
        value = ",".join(value)
    if isinstance(value, (list, dict)):
        raise ConfigError(f"{setting.source}: {setting.key} = {value!r}: expected a single value")
    try:
        return option.type_cast_value(ctx, value)
    except click.ClickException as exc:
        shown = f"={value}" if setting.source.startswith(ENV_PREFIX) else f": {setting.key} = {value!r}"
        raise ConfigError(f"{setting.source}{shown}: {exc.message}") from None


def default_map(group: click.Group, name: str, cwd: Path | None = None,
                environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``{parameter name: value}``: the configured defaults of command ``name`` of ``group``, validated by the
    options' types, for click's ``default_map``."""
    command = group.commands[name]
    pyproject = find_pyproject(Path.cwd() if cwd is None else cwd)
    settings = [] if pyproject is None else pyproject_settings(group, name, pyproject)
    settings += environment_settings(command, os.environ if environ is None else environ)
    options = option_keys(command)
    ctx = click.Context(command, info_name=name)
    return {options[s.key].name: _convert(options[s.key], s, ctx) for s in settings}
