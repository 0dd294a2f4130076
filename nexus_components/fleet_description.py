"""A fleet description for `scripts/fleet`: read, checked, and each lab's stack settings.

Pure: no Pulumi import (the Automation-API driver is nexus_components/cli/fleet.py). A
description is a YAML file:

    project: ..              # optional: the Pulumi project's folder, relative to this file
    parallel: 2              # optional: how many labs run at once (--parallel wins)
    defaults:                # optional: what every lab starts from (a lab's keys but name, stack)
      config:
        nexus:vm: {accelerator: tcg, memoryMiB: 2048}
    labs:
      - name: alice          # required; also the stack's name unless `stack` is given
        stack: alice         # optional: the Pulumi stack (org/alice on a backend with orgs)
        config:
          nexus:network: {sshPort: 2301}

A lab's settings are the defaults' with its own laid over them, mapping into mapping; a
list or a plain value replaces the default's, and `null` drops it. The description owns
its labs' `nexus:` keys: each stack gets exactly these (a `nexus:` key it has beside them is
removed), and keys of other namespaces are left alone. The settings themselves are checked
by the project's program, for each lab on its own: a misspelt `nexus:vm` key fails that lab
alone, with the program's own message.

Every mistake in the description itself is reported at once, before anything runs, each
as `key: got <value>; allowed: <what>`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nexus_components.core.errors import NexusError

NAMESPACE = "nexus"
TOP_KEYS = ("defaults", "labs", "parallel", "project")
LAB_KEYS = ("config", "name", "stack")
DEFAULTS_KEYS = ("config",)
# Lab names show in every progress line and the summary; keep them plain words.
LAB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
# Pulumi's own rule for a stack name, optionally qualified as org/name or org/project/name.
STACK_PART = r"[A-Za-z0-9_.-]{1,100}"
STACK_NAME = re.compile(rf"{STACK_PART}(/{STACK_PART}){{0,2}}")
CONFIG_KEY = re.compile(rf"{NAMESPACE}:[A-Za-z][A-Za-z0-9]*")


class FleetDescriptionError(NexusError):
    """The fleet description (or a command-line choice about it) is wrong; nothing has run."""


@dataclass(frozen=True)
class Lab:
    name: str
    stack: str
    # The lab's `nexus:` keys (defaults merged in), each a section as in a stack file.
    config: Mapping[str, Any] = field(default_factory=dict)

    @property
    def stack_file_name(self) -> str:
        """The part Pulumi names the stack's settings file after (Pulumi.<this>.yaml)."""
        return self.stack.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Fleet:
    source: Path
    project: Path | None
    parallel: int | None
    labs: tuple[Lab, ...]


def load_description(path: Path) -> Fleet:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise FleetDescriptionError(
            f"could not read the fleet description {path}: {error.strerror or error}",
            hint="give the path of a YAML file that lists the labs (see the README's scripts/fleet)",
        ) from error
    fleet = parse_description(text, path)
    if fleet.project is not None and not (fleet.project / "Pulumi.yaml").is_file():
        raise _invalid(path, [_got("project", fleet.project, "a folder with a Pulumi.yaml")])
    return fleet


def parse_description(text: str, source: Path) -> Fleet:
    """The fleet `text` describes; `source` is its file (relative paths are the file's)."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise FleetDescriptionError(
            f"the fleet description {source} is not valid YAML:\n{error}",
            hint=f"fix the YAML in {source}",
        ) from error
    problems: list[str] = []
    if not isinstance(document, dict):
        raise _invalid(
            source, [_got("(the whole file)", document, f"a mapping with keys {', '.join(TOP_KEYS)}")]
        )
    problems += _unknown_keys("", document, TOP_KEYS)

    project = None
    if "project" in document:
        value = document["project"]
        if isinstance(value, str) and value.strip():
            project = (source.parent / Path(value).expanduser()).resolve()
        else:
            problems.append(_got("project", value, "a folder's path, relative to this file"))

    parallel = None
    if "parallel" in document:
        try:
            parallel = check_parallel(document["parallel"], key="parallel")
        except FleetDescriptionError as error:
            problems.append(error.what)

    defaults: Mapping[str, Any] = {}
    if "defaults" in document:
        raw_defaults = document["defaults"]
        if isinstance(raw_defaults, dict):
            problems += _unknown_keys("defaults.", raw_defaults, DEFAULTS_KEYS)
            defaults = merged({}, _config("defaults.config", raw_defaults.get("config", {}), problems))
        else:
            problems.append(_got("defaults", raw_defaults, f"a mapping with keys {', '.join(DEFAULTS_KEYS)}"))

    labs = _labs(document.get("labs"), defaults, problems)
    if problems:
        raise _invalid(source, problems)
    return Fleet(source=source, project=project, parallel=parallel, labs=labs)


def check_parallel(value: Any, *, key: str = "--parallel") -> int:
    """How many labs may run at once: a whole number of at least 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FleetDescriptionError(
            _got(key, value, "a whole number of at least 1"), hint="say how many labs may run at once"
        )
    return value


def select_labs(fleet: Fleet, names: Sequence[str]) -> tuple[Lab, ...]:
    """The labs named (all when none is), in the description's order."""
    if not names:
        return fleet.labs
    known = [lab.name for lab in fleet.labs]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise FleetDescriptionError(
            "\n".join(
                _got("--lab", name, f"a lab of {fleet.source}: {', '.join(known)}") for name in unknown
            ),
            hint="name labs of the description, or leave --lab out for all of them",
        )
    return tuple(lab for lab in fleet.labs if lab.name in names)


def _labs(raw: Any, defaults: Mapping[str, Any], problems: list[str]) -> tuple[Lab, ...]:
    if not isinstance(raw, list) or not raw:
        problems.append(_got("labs", raw, "a list of at least one lab, each with a name"))
        return ()
    labs: list[Lab] = []
    names: dict[str, str] = {}
    stack_files: dict[str, tuple[str, str]] = {}
    for index, entry in enumerate(raw):
        where = f"labs[{index}]"
        if not isinstance(entry, dict):
            problems.append(_got(where, entry, f"a mapping with keys {', '.join(LAB_KEYS)}"))
            continue
        problems += _unknown_keys(f"{where}.", entry, LAB_KEYS)
        name = _unique_name(where, entry, names, problems)
        stack = _unique_stack(where, entry, name, stack_files, problems)
        config = _config(f"{where}.config", entry.get("config", {}), problems)
        if isinstance(name, str) and isinstance(stack, str):
            labs.append(Lab(name=name, stack=stack, config=merged(defaults, config)))
    return tuple(labs)


def _unique_name(
    where: str, entry: Mapping[str, Any], names: dict[str, str], problems: list[str]
) -> str | None:
    """The lab's name, if it is a good one no lab before it has (`names`: name -> where)."""
    if "name" not in entry:
        problems.append(f"{where}.name: missing; allowed: {_NAME_RULE}")
        return None
    name = entry["name"]
    if not isinstance(name, str) or not LAB_NAME.fullmatch(name):
        problems.append(_got(f"{where}.name", name, _NAME_RULE))
        return None
    if name in names:
        problems.append(_got(f"{where}.name", name, f"a name no other lab has ({names[name]} has it)"))
        return None
    names[name] = where
    return name


def _unique_stack(
    where: str,
    entry: Mapping[str, Any],
    name: str | None,
    stack_files: dict[str, tuple[str, str]],
    problems: list[str],
) -> str | None:
    """The lab's stack (its name unless given), if good and no lab before it has it.
    `stack_files`: the last part of each stack's name -> (where, stack)."""
    if "stack" not in entry:
        stack = name
    elif _matches(STACK_NAME, entry["stack"]):
        stack = entry["stack"]
    else:
        problems.append(_got(f"{where}.stack", entry["stack"], _STACK_RULE))
        return None
    if stack is None:
        return None
    # Two stacks of one project whose last parts match would share one settings file.
    short = stack.rsplit("/", 1)[-1]
    if short in stack_files:
        other, other_stack = stack_files[short]
        problems.append(
            _got(f"{where}.stack", stack, f"a stack no other lab has ({other} has {other_stack!r})")
        )
        return None
    stack_files[short] = (where, stack)
    return stack


def _config(where: str, raw: Any, problems: list[str]) -> Mapping[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.append(_got(where, raw, "a mapping of nexus: keys, such as nexus:vm"))
        return {}
    good: dict[str, Any] = {}
    for key, value in raw.items():
        if not _matches(CONFIG_KEY, key):
            problems.append(
                f"{where}.{key}: unknown key; allowed: keys of the {NAMESPACE}: namespace, "
                f"such as {NAMESPACE}:vm or {NAMESPACE}:network (the stack file's keys)"
            )
            continue
        bad = _not_json(value)
        if bad is not None:
            problems.append(
                _got(f"{where}.{key}", bad, "plain YAML values (text, numbers, true/false, lists, maps)")
            )
            continue
        good[key] = value
    return good


def merged(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` laid on `base`: mappings merge key by key, anything else replaces, None drops."""
    result = dict(base)
    for key, value in over.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = merged(result[key], value)
        else:
            result[key] = _without_nones(value)
    return result


def _without_nones(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _without_nones(item) for key, item in value.items() if item is not None}
    return value


# --------------------------------------------------------------------------- stack settings


@dataclass(frozen=True)
class ConfigChanges:
    """What makes a stack's `nexus:` keys the lab's: keys to set (with their values), keys to remove."""

    to_set: Mapping[str, Any]
    to_remove: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.to_set or self.to_remove)


def config_changes(current: Mapping[str, str], desired: Mapping[str, Any]) -> ConfigChanges:
    """`current`: the stack's config as `pulumi config --json` gives each value (text; a
    map's or list's as JSON). Keys outside the `nexus:` namespace are not the fleet's."""
    to_set = {key: value for key, value in desired.items() if not _same(current.get(key), value)}
    to_remove = tuple(
        sorted(key for key in current if key.startswith(f"{NAMESPACE}:") and key not in desired)
    )
    return ConfigChanges(to_set, to_remove)


def set_all_json(values: Mapping[str, Any]) -> str:
    """The `pulumi config set-all --json` argument that sets `values` (maps and lists as
    structured values, like `config set --path` makes them; plain values as text)."""
    entries: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        if isinstance(value, (Mapping, list)):
            entries[key] = {"value": json.dumps(value), "objectValue": value, "secret": False}
        else:
            entries[key] = {"value": _text(value), "secret": False}
    return json.dumps(entries)


def _same(current: str | None, value: Any) -> bool:
    if current is None:
        return False
    if isinstance(value, (Mapping, list)):
        try:
            stored = json.loads(current)
        except json.JSONDecodeError:
            return False
        # Canonical JSON: Python alone would take True for 1 and 1.0 for 1.
        return json.dumps(stored, sort_keys=True) == json.dumps(value, sort_keys=True)
    return current == _text(value)


def _text(value: Any) -> str:
    # Pulumi keeps a top-level plain value as text; the program reads it back as JSON.
    return value if isinstance(value, str) else json.dumps(value)


# --------------------------------------------------------------------------- messages

_NAME_RULE = "1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit"
_STACK_RULE = (
    "a Pulumi stack name: letters, digits, '.', '_', '-' "
    "(org/name or org/project/name on a backend with orgs)"
)


def _matches(pattern: re.Pattern[str], value: Any) -> bool:
    return isinstance(value, str) and pattern.fullmatch(value) is not None


def _unknown_keys(prefix: str, mapping: Mapping[Any, Any], allowed: Iterable[str]) -> list[str]:
    allowed = tuple(allowed)
    return [
        f"{prefix}{key}: unknown key; allowed keys here: {', '.join(allowed)}"
        for key in mapping
        if key not in allowed
    ]


def _got(key: str, value: Any, allowed: str) -> str:
    shown = str(value) if isinstance(value, Path) else repr(value)
    return f"{key}: got {shown}; allowed: {allowed}"


def _not_json(value: Any) -> Any:
    """The first part of `value` that a stack file cannot hold (a YAML date, NaN), or None."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                return key
            bad = _not_json(item)
            if bad is not None:
                return bad
        return None
    if isinstance(value, list):
        for item in value:
            bad = _not_json(item)
            if bad is not None:
                return bad
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return value
    if value is None or isinstance(value, (str, bool, int, float)):
        return None
    return value


def _invalid(source: Path, problems: Sequence[str]) -> FleetDescriptionError:
    return FleetDescriptionError(
        f"invalid fleet description {source}:\n" + "\n".join(f"  {problem}" for problem in problems),
        hint=f"fix the keys above in {source}; no lab was started",
    )
