"""Pulumi dynamic providers: the create/diff/update/delete hooks of each host layer.

Each provider hands its hooks to the matching class of `lifecycles.py`, which the `nexus`
provider plugin calls too: one implementation of the host layer, two front ends.
Dynamic providers (rather than pulumi-command's `local.Command`) give every layer a real
`diff` that looks at the machine: a VM that is no longer running, or a disk that
vanished, shows up in `pulumi preview` as something to start or create again.

Existing stacks store these classes by module path and name (pickled), so both stay as
they are until the migration to the plugin's typed resources (issue 14).
"""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar, cast

from pulumi.dynamic import CreateResult, DiffResult, ReadResult, ResourceProvider, UpdateResult

from nexus_components.core.errors import NexusError
from nexus_components.core.progress import say
from nexus_components.host import lifecycles

Props = dict[str, Any]
# Kept under their old names: the guest providers and the tests import them from here.
_say = say
_ensure_firmware_vars = lifecycles.ensure_firmware_vars
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


@_reports_errors
class _LifecycleProvider(ResourceProvider):
    """A dynamic provider whose hooks are those of one `lifecycles.Lifecycle`."""

    lifecycle: ClassVar[lifecycles.Lifecycle]

    def create(self, props: Props) -> CreateResult:
        made = self.lifecycle.create(props)
        return CreateResult(id_=made.id, outs=made.outs)

    def diff(self, _id: str, olds: Props, news: Props) -> DiffResult:
        diff = self.lifecycle.diff(olds, news)
        return DiffResult(
            changes=diff.changes, replaces=diff.replaces, delete_before_replace=diff.delete_before_replace
        )

    def update(self, _id: str, olds: Props, news: Props) -> UpdateResult:
        return UpdateResult(outs=self.lifecycle.update(olds, news))

    def read(self, id_: str, props: Props) -> ReadResult:
        return ReadResult(id_=id_, outs=self.lifecycle.read(id_, props))

    def delete(self, _id: str, props: Props) -> None:
        self.lifecycle.delete(props)


class StateDirProvider(_LifecycleProvider):
    lifecycle = lifecycles.StateDir()


class BaseImageProvider(_LifecycleProvider):
    lifecycle = lifecycles.BaseImage()


class SshKeyProvider(_LifecycleProvider):
    lifecycle = lifecycles.SshKey()


class OverlayDiskProvider(_LifecycleProvider):
    lifecycle = lifecycles.OverlayDisk()


class CloudInitSeedProvider(_LifecycleProvider):
    lifecycle = lifecycles.CloudInitSeed()


class QemuVmProvider(_LifecycleProvider):
    lifecycle = lifecycles.QemuVm()
