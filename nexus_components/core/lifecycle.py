"""What every resource's lifecycle is made of: its create/diff/update/read/delete on plain
property dicts, which the `nexus` plugin's controller calls (host and guest alike).
No Pulumi import.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

Props = dict[str, Any]

# Whether the engine runs a preview: a diff may then leave out a slow probe whose finding only
# an `up` acts on (the `up` diffs again, with it). Unknown (a resource declared outside the
# Lab, whose construct tells the plugin): not a preview.
_previewing: ContextVar[bool] = ContextVar("nexus_previewing", default=False)


@contextmanager
def previewing(preview: bool) -> Iterator[None]:
    token = _previewing.set(preview)
    try:
        yield
    finally:
        _previewing.reset(token)


def in_preview() -> bool:
    return _previewing.get()


@dataclass(frozen=True)
class Created:
    id: str
    outs: Props


@dataclass(frozen=True)
class Diff:
    changes: bool
    replaces: list[str] = field(default_factory=list)
    delete_before_replace: bool = False


def changed(olds: Props, news: Props, keys: tuple[str, ...]) -> list[str]:
    return [key for key in keys if olds.get(key) != news.get(key)]


class Lifecycle:
    """One kind of resource. Without `update`, every change is a replacement."""

    has_update = False

    def create(self, props: Props) -> Created:
        raise NotImplementedError

    def diff(self, olds: Props, news: Props) -> Diff:
        raise NotImplementedError

    def update(self, olds: Props, news: Props) -> Props:
        raise NotImplementedError(f"{type(self).__name__} is replaced, never updated")

    def read(self, id_: str, props: Props) -> Props:
        return props

    def delete(self, props: Props) -> None:
        pass
