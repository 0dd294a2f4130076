"""What the guest layers' dynamic providers share: their errors shown without a traceback.

The host layer's dynamic providers that used to live here are gone: the host layer is the
`nexus` package's typed resources (nexus_provider/, nexus_components/lifecycles.py), and a
stack made by an earlier version is upgraded once (scripts/upgrade-stack) without running
their code. What is left serves the guest layers' providers (nexus_components/guest/)
until they become the package's resources too.
"""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable
from typing import Any, TypeVar, cast

from pulumi.dynamic import ResourceProvider

from . import lifecycles
from .errors import NexusError

# Kept under its old name: the guest providers import it from here.
_say = lifecycles.say
Method = TypeVar("Method", bound=Callable[..., Any])


class _MessageOnlyTraceback:
    """Stands in for the `traceback` module inside the dynamic-provider host.

    The host (pulumi.dynamic's __main__) sends `traceback.format_exc()` to the engine as
    the error of every failed call. Our errors already say what failed, the command and
    the next step, so for them the message alone is sent; any other exception (a bug)
    keeps its full traceback.
    """

    def __getattr__(self, name: str) -> Any:
        return getattr(traceback, name)

    @staticmethod
    def format_exc(limit: int | None = None, chain: bool = True) -> str:
        error = sys.exc_info()[1]
        if isinstance(error, NexusError):
            return str(error)
        return traceback.format_exc(limit, chain)


def _report_our_errors_without_traceback() -> None:
    host = sys.modules.get("__main__")
    spec = getattr(host, "__spec__", None)
    if getattr(spec, "name", None) == "pulumi.dynamic.__main__" and hasattr(host, "traceback"):
        host.traceback = _MessageOnlyTraceback()  # type: ignore[union-attr]


def _clean_errors(method: Method) -> Method:
    """Show our errors as their message, without the provider's internal stack trace."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _report_our_errors_without_traceback()
        try:
            return method(*args, **kwargs)
        except NexusError as error:
            raise error.with_traceback(None) from None

    return cast(Method, wrapper)


def _reports_errors(cls: type[ResourceProvider]) -> type[ResourceProvider]:
    for name in ("create", "diff", "update", "delete", "read"):
        if name in vars(cls):
            setattr(cls, name, _clean_errors(vars(cls)[name]))
    return cls
