"""The reference program's `nexus:` stack settings as the arguments of the package's Lab.

The Lab (`nexus:index:Lab`) takes each stack section (`nexus:vm`, `nexus:network`, ...) as
one argument of the same shape, so the settings are passed as they are: the only change is
the few keys whose Lab property is spelt otherwise (`memoryMiB` is the Lab's `memoryMib`,
the camelCase of its Python name). A section the Lab does not take is handed back, for the
program to declare itself. Pure: no Pulumi import.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# Stack setting -> the Lab's property, where the two are spelt otherwise (a section's own keys).
LAB_PROPERTY = {"memoryMiB": "memoryMib"}
SETTING = {lab: setting for setting, lab in LAB_PROPERTY.items()}


def _comparable(name: str) -> str:
    return name.replace("_", "").lower()


def lab_arguments(
    settings: Mapping[str, Any], keywords: Iterable[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the Lab's keyword arguments, the sections it does not take).

    `keywords` are the Lab's argument names in the SDK (`vm`, `inner_vm`...): a stack section
    goes to the one spelt the same but for case and underscores (`innerVm` -> `inner_vm`).
    Within a section, keys are the Lab's property names (the SDK passes them on as they are),
    so free-form values (`userData`, `env`) are left untouched.
    """
    by_section = {_comparable(keyword): keyword for keyword in keywords}
    arguments: dict[str, Any] = {}
    left: dict[str, Any] = {}
    for section, values in settings.items():
        keyword = by_section.get(_comparable(section))
        if keyword is None:
            left[section] = values
        elif isinstance(values, Mapping):
            arguments[keyword] = {LAB_PROPERTY.get(key, key): value for key, value in values.items()}
        elif values is not None and (section, values) != ("host", "local"):
            # nexus:host: local is the Lab's default (no host argument): this machine.
            arguments[keyword] = values
    return arguments, left
