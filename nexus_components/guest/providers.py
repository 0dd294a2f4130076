"""The guest layers' dynamic providers, kept for stacks made by earlier releases.

Such a stack names these classes in its state (a pickled module path and class name), so
the engine needs them to delete, refresh or diff what it made with them; this release
declares the plugin's nexus:guest:* resources instead, and its first `up` on such a stack
replaces these. The work is `lifecycles.py`, which the nexus plugin runs too: each hook is
handed to it, nothing is done twice. They go when old stacks are migrated (issue 14).
"""

from __future__ import annotations

from typing import Any

from pulumi.dynamic import CreateResult, DiffResult, ReadResult, ResourceProvider, UpdateResult

from ..host.lifecycles import Diff, Lifecycle, Props
from ..providers import _reports_errors
from . import lifecycles


def _diff_result(diff: Diff) -> DiffResult:
    return DiffResult(
        changes=diff.changes, replaces=diff.replaces, delete_before_replace=diff.delete_before_replace
    )


@_reports_errors
class DelegatingProvider(ResourceProvider):
    """A dynamic provider that hands every hook to a guest lifecycle, props as they are."""

    lifecycle: Lifecycle

    def create(self, props: Props) -> CreateResult:
        made = self.lifecycle.create(props)
        return CreateResult(id_=made.id, outs=made.outs)

    def diff(self, _id: str, olds: Props, news: Props) -> DiffResult:
        return _diff_result(self.lifecycle.diff(olds, news))

    def update(self, _id: str, olds: Props, news: Props) -> UpdateResult:
        return UpdateResult(outs=self.lifecycle.update(olds, news))

    def read(self, id_: str, props: Props) -> ReadResult:
        return ReadResult(id_=id_, outs=self.lifecycle.read(id_, props))

    def delete(self, _id: str, props: Props) -> None:
        self.lifecycle.delete(props)


class DockerEngineProvider(DelegatingProvider):
    lifecycle = lifecycles.DockerEngine()


class ContainerPresenceProvider(DelegatingProvider):
    lifecycle = lifecycles.ContainerPresence()


class ContainerPreflightProvider(DelegatingProvider):
    lifecycle = lifecycles.ContainerPreflight()


class ScriptFileProvider(DelegatingProvider):
    lifecycle = lifecycles.ScriptFile()


def _flat(props: Props) -> Props:
    """An earlier release's inner-VM properties (the settings under `spec`, the accelerator
    it chose at the top) as the lifecycle's (the settings at the top)."""
    spec: dict[str, Any] = props.get("spec") or {}
    return {**props, **spec, "chosen_accelerator": props.get("accelerator")}


def _nested(props: Props, outs: Props) -> Props:
    return {**props, **{key: outs[key] for key in ("pid", "qmp_status", "ready_seconds") if key in outs},
            "accelerator": outs.get("chosen_accelerator")}  # fmt: skip


@_reports_errors
class InnerVmProvider(ResourceProvider):
    """The inner VM, with the properties an earlier release stored."""

    lifecycle = lifecycles.InnerVm()

    def create(self, props: Props) -> CreateResult:
        made = self.lifecycle.create(_flat(props))
        return CreateResult(id_=made.id, outs=_nested(props, made.outs))

    def diff(self, _id: str, olds: Props, news: Props) -> DiffResult:
        return _diff_result(self.lifecycle.diff(_flat(olds), _flat(news)))

    def update(self, _id: str, olds: Props, news: Props) -> UpdateResult:
        return UpdateResult(outs=_nested(news, self.lifecycle.update(_flat(olds), _flat(news))))

    def read(self, id_: str, props: Props) -> ReadResult:
        return ReadResult(id_=id_, outs=_nested(props, self.lifecycle.read(id_, _flat(props))))

    def delete(self, _id: str, props: Props) -> None:
        self.lifecycle.delete(_flat(props))
