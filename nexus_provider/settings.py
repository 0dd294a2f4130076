"""Typed properties that follow the stack configuration's own rules.

A property that is also a `nexus:` stack setting (nexus_components/config.py's SCHEMA)
takes its bounds, pattern and rule in words from that schema, so the package and the
reference program refuse the same values with the same words.
"""

from __future__ import annotations

from typing import Any

from nexus_components.config import SCHEMA

from .spec import prop


def setting_rule(section: str, key: str) -> dict[str, Any]:
    """The JSON Schema of the stack setting nexus:<section>.<key>."""
    rule: dict[str, Any] = SCHEMA["properties"][section]["properties"][key]
    return rule


def setting(description: str, section: str, key: str) -> Any:
    """A property with the rule of the stack setting nexus:<section>.<key>."""
    return ruled(description, setting_rule(section, key))


def item_rule(section: str, key: str, item: str | None = None) -> dict[str, Any]:
    """The JSON Schema of the items of the list setting nexus:<section>.<key>, or of one
    property `item` of those items (nexus:playground.ports[].vm)."""
    rule: dict[str, Any] = setting_rule(section, key)["items"]
    return rule if item is None else rule["properties"][item]


def ruled(description: str, rule: dict[str, Any]) -> Any:
    """A property with this JSON Schema rule (bounds, pattern and the pattern in words)."""
    return prop(
        description,
        minimum=rule.get("minimum"),
        maximum=rule.get("maximum"),
        pattern=rule.get("pattern"),
        rule=rule.get("description", ""),
    )
