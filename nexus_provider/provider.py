"""The `nexus` provider: one controller with the CRUD of every registered resource.

Each call finds the resource's `ResourceSpec` by its type token, turns the engine's
property values into the plain dict its lifecycle takes (the same one the dynamic
providers pass), runs the lifecycle in a worker thread (it blocks: downloads, QEMU,
SSH) and turns the result back. `check` refuses bad inputs by property; during
`preview`, `create` and `update` touch nothing and report the outputs as unknown.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import grpc
import pulumi
from pulumi.errors import InputPropertiesError
from pulumi.provider.experimental.property_value import Computed, PropertyValue
from pulumi.provider.experimental.provider import (
    CheckFailure,
    CheckRequest,
    CheckResponse,
    ConstructRequest,
    ConstructResponse,
    CreateRequest,
    CreateResponse,
    DeleteRequest,
    DiffRequest,
    DiffResponse,
    GetSchemaRequest,
    GetSchemaResponse,
    PropertyDiff,
    PropertyDiffKind,
    Provider,
    ReadRequest,
    ReadResponse,
    UpdateRequest,
    UpdateResponse,
)
from pulumi.resource import DependencyResource
from pulumi.runtime.proto import engine_pb2, engine_pb2_grpc
from pulumi.runtime.rpc import UNKNOWN as WIRE_UNKNOWN

from nexus_components.core import lifecycle, progress

from . import NAME, VERSION
from .resources import COMPONENTS, DESCRIPTION, RESOURCES
from .spec import (
    UNKNOWN,
    ComponentSpec,
    Failure,
    ResourceSpec,
    camel_case,
    check_inputs,
    contains_unknown,
    from_schema_names,
    package_schema,
    to_schema_names,
)

PropertyMap = Mapping[str, PropertyValue]
Result = TypeVar("Result")
# This SDK's PropertyValue cannot marshal its own `computed()`: send the wire's sentinel.
UNKNOWN_VALUE = PropertyValue(WIRE_UNKNOWN)


def to_python(value: PropertyValue) -> Any:
    """An engine value as plain Python; an unknown one as `spec.UNKNOWN`."""
    inner = value.value
    # On the wire an unknown is a sentinel string, which this SDK's PropertyValue keeps as is.
    if isinstance(inner, Computed) or inner == WIRE_UNKNOWN:
        return UNKNOWN
    if isinstance(inner, Mapping):
        return {key: to_python(item) for key, item in inner.items()}
    if isinstance(inner, tuple):
        return [to_python(item) for item in inner]
    return inner


def to_property_value(value: Any, *, secret: bool = False) -> PropertyValue:
    if value is UNKNOWN:
        return UNKNOWN_VALUE
    if isinstance(value, Mapping):
        return PropertyValue({key: to_property_value(item) for key, item in value.items()}, is_secret=secret)
    if isinstance(value, list | tuple):
        return PropertyValue([to_property_value(item) for item in value], is_secret=secret)
    if isinstance(value, int) and not isinstance(value, bool):
        value = float(value)  # the engine's only number type
    return PropertyValue(value, is_secret=secret)


async def output_property(value: Any) -> PropertyValue:
    """A component's output as an engine value: known or not, secret or not, and what it depends on."""
    if not isinstance(value, pulumi.Output):
        return to_property_value(value)
    if not await value.is_known():
        return UNKNOWN_VALUE
    urns = {await resource.urn.future() for resource in await value.resources()}
    known = to_property_value(await value.future(), secret=await value.is_secret())
    return known.with_dependencies(urn for urn in urns if urn)


def _unknown_refused(inputs: Mapping[str, Any]) -> list[Failure]:
    # A component's arguments decide which resources it declares, so they must be known.
    return [
        Failure(
            key, "not known yet; allowed: a value known when the program runs, not another resource's output"
        )
        for key, value in inputs.items()
        if contains_unknown(value)
    ]


class NexusProvider(Provider):
    def __init__(
        self, resources: Sequence[ResourceSpec] = RESOURCES, components: Sequence[ComponentSpec] = COMPONENTS
    ) -> None:
        self._resources = {spec.pulumi_type: spec for spec in resources}
        self._components = {spec.pulumi_type: spec for spec in components}
        self._schema = json.dumps(package_schema(NAME, VERSION, DESCRIPTION, resources, components))
        self._engine: Any = None
        # Whether this deployment is a preview, as the Lab's construct learns it.
        self._preview = False

    def attach_engine(self, address: str) -> None:
        """The engine's address, for the resources' progress lines (`[vm] ready after ...`)."""
        self._engine = engine_pb2_grpc.EngineStub(grpc.insecure_channel(address))

    def _report(self, urn: str) -> Callable[[str], None]:
        def report(line: str) -> None:
            if self._engine is None:
                print(line, file=sys.stderr, flush=True)
                return
            request = engine_pb2.LogRequest(severity=engine_pb2.INFO, message=line, urn=urn, ephemeral=False)
            try:
                self._engine.Log(request)
            except grpc.RpcError:
                print(line, file=sys.stderr, flush=True)  # the engine is gone: its debug log, at least

        return report

    async def _run(self, urn: str, work: Callable[..., Result], *args: Any) -> Result:
        """A lifecycle call in a worker thread (it blocks: downloads, QEMU, SSH), its progress
        reported against the resource."""

        def call() -> Result:
            with progress.progress_to(self._report(urn)), lifecycle.previewing(self._preview):
                return work(*args)

        return await asyncio.to_thread(call)

    def _spec(self, urn_type: str) -> ResourceSpec:
        # A URN's type is qualified by its parents' (`nexus:index:Lab$nexus:host:QemuVm`).
        token = urn_type.rsplit("$", 1)[-1]
        try:
            return self._resources[token]
        except KeyError:
            raise ValueError(f"{NAME} {VERSION} has no resource {token}") from None

    def _props(self, spec: ResourceSpec, values: PropertyMap) -> dict[str, Any]:
        return from_schema_names(spec, {key: to_python(value) for key, value in values.items()})

    def _inputs(self, spec: ResourceSpec, values: PropertyMap) -> dict[str, Any]:
        return spec.derive(self._props(spec, values))

    @staticmethod
    def _state(props: Mapping[str, Any], secrets_from: PropertyMap) -> dict[str, PropertyValue]:
        """The lifecycle's result as engine values; what came in secret stays secret."""
        state = to_schema_names(props)
        return {
            key: to_property_value(value, secret=key in secrets_from and secrets_from[key].contains_secret())
            for key, value in state.items()
        }

    def _unknown_outputs(self, spec: ResourceSpec, inputs: PropertyMap) -> dict[str, PropertyValue]:
        outputs = {name: UNKNOWN_VALUE for name in spec.state_names() if name not in inputs}
        return {**inputs, **outputs}

    async def get_schema(self, request: GetSchemaRequest) -> GetSchemaResponse:
        return GetSchemaResponse(self._schema)

    async def check_config(self, request: CheckRequest) -> CheckResponse:
        # Pulumi hands the package's config namespace (`nexus:`) to its default provider. Those
        # keys are the reference program's stack settings (nexus:vm, nexus:network...), which
        # programs read; the provider has no settings of its own, so it takes them as they are.
        return CheckResponse(inputs=request.new_inputs, failures=[])

    async def construct(self, request: ConstructRequest) -> ConstructResponse:
        spec = self._components.get(request.resource_type)
        if spec is None:
            raise ValueError(f"{NAME} {VERSION} has no component {request.resource_type}")
        # The engine says so to a construct only; the Lab's resources are diffed after it.
        self._preview = pulumi.runtime.is_dry_run()
        raw = {key: to_python(value) for key, value in request.inputs.items()}
        failures = check_inputs(spec, raw) + _unknown_refused(raw)
        if failures:
            raise InputPropertiesError(
                f"{request.resource_type} {request.name}: invalid arguments",
                [{"property_path": failure.property, "reason": failure.reason} for failure in failures],
            )
        # What the arguments came from comes before the component, as for any resource.
        after = {urn for value in request.inputs.values() for urn in value.all_dependencies()}
        options = pulumi.ResourceOptions.merge(
            request.options,
            pulumi.ResourceOptions(depends_on=[DependencyResource(urn) for urn in sorted(after)]),
        )
        component = spec.component(request.name, from_schema_names(spec, raw), options)
        state = {
            # A layer the arguments leave out has no outputs: null.
            name: await output_property(component.outputs.get(python_name))
            for name, python_name in spec.output_names().items()
        }
        return ConstructResponse(urn=await component.urn.future(), state=state, state_dependencies={})

    async def check(self, request: CheckRequest) -> CheckResponse:
        spec = self._spec(request.type)
        raw = {key: to_python(value) for key, value in request.new_inputs.items()}
        failures = check_inputs(spec, raw)
        return CheckResponse(
            inputs=request.new_inputs,
            failures=[CheckFailure(failure.property, failure.reason) for failure in failures],
        )

    async def diff(self, request: DiffRequest) -> DiffResponse:
        spec = self._spec(request.type)
        olds = self._props(spec, request.old_state)
        news = self._inputs(spec, request.new_inputs)
        diff = await self._run(request.urn, spec.lifecycle.diff, olds, news)
        replaces = [camel_case(key) for key in diff.replaces]
        updates = [camel_case(key) for key in spec.input_names().values() if olds.get(key) != news.get(key)]
        detailed = {key: PropertyDiff(PropertyDiffKind.UPDATE, input_diff=True) for key in updates}
        detailed.update(
            {key: PropertyDiff(PropertyDiffKind.UPDATE_REPLACE, input_diff=True) for key in replaces}
        )
        return DiffResponse(
            changes=diff.changes,
            replaces=replaces,
            delete_before_replace=diff.delete_before_replace,
            diffs=sorted(detailed),
            detailed_diff=detailed if diff.changes else {},
        )

    async def create(self, request: CreateRequest) -> CreateResponse:
        spec = self._spec(request.type)
        if request.preview:
            return CreateResponse(resource_id="", properties=self._unknown_outputs(spec, request.properties))
        made = await self._run(request.urn, spec.lifecycle.create, self._inputs(spec, request.properties))
        return CreateResponse(resource_id=made.id, properties=self._state(made.outs, request.properties))

    async def update(self, request: UpdateRequest) -> UpdateResponse:
        spec = self._spec(request.type)
        if request.preview:
            return UpdateResponse(properties=self._unknown_outputs(spec, request.news))
        outs = await self._run(
            request.urn,
            spec.lifecycle.update,
            self._props(spec, request.olds),
            self._inputs(spec, request.news),
        )
        return UpdateResponse(properties=self._state(outs, request.news))

    async def read(self, request: ReadRequest) -> ReadResponse:
        spec = self._spec(request.type)
        props = await self._run(
            request.urn, spec.lifecycle.read, request.resource_id, self._props(spec, request.properties)
        )
        return ReadResponse(
            resource_id=request.resource_id,
            properties=self._state(props, request.properties),
            inputs=request.inputs,
        )

    async def delete(self, request: DeleteRequest) -> None:
        spec = self._spec(request.type)
        await self._run(request.urn, spec.lifecycle.delete, self._props(spec, request.properties))
