"""Typed resource declarations, and what follows from them: the schema and the checks.

A resource of the `nexus` package is declared once, in its own module under `host/`: a
frozen dataclass of inputs and one of the outputs it adds, each field made with `prop`
(its description, and the rule a value must follow). From those two classes come the
package schema (`pulumi package get-schema`, the generated SDKs and their docs) and the
`check` that refuses a bad input at preview, naming the property and what is allowed.
The work itself is a `lifecycles.Lifecycle`, shared with the dynamic providers.

Pure Python: no Pulumi import, so the schema and the checks are unit-tested directly.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from nexus_components.core.lifecycle import Lifecycle, Props


class Unknown:
    """A value the engine does not know yet (an output of a resource still to be made).

    It differs from every known value, and is neither smaller nor larger than one, so a
    lifecycle's diff sees it as a change and refuses nothing on its account.
    """

    def __repr__(self) -> str:
        return "<unknown>"

    def __lt__(self, other: object) -> bool:
        return False

    __gt__ = __le__ = __ge__ = __lt__


UNKNOWN = Unknown()


def contains_unknown(value: Any) -> bool:
    """Whether this value, or anything in it, is not known yet."""
    if value is UNKNOWN:
        return True
    if isinstance(value, Mapping):
        return any(contains_unknown(item) for item in value.values())
    if isinstance(value, list | tuple):
        return any(contains_unknown(item) for item in value)
    return False


def prop(
    description: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    pattern: str | None = None,
    rule: str = "",
) -> Any:
    """A property of a resource: its description, and the rule its value must follow.

    `pattern` (a regular expression the whole value must match) needs `rule`, the same
    rule in words, which is what a refused value is told.
    """
    if pattern is not None and not rule:
        raise ValueError("a pattern needs its rule in words")
    return dataclasses.field(
        metadata={
            "description": description,
            "minimum": minimum,
            "maximum": maximum,
            "pattern": pattern,
            "rule": rule,
        }
    )


def absolute_path(description: str) -> Any:
    return prop(description, pattern=r"/.*", rule="an absolute path")


def port(description: str) -> Any:
    return prop(description, minimum=1, maximum=65535)


@dataclass(frozen=True)
class Failure:
    """A refused input: the property (schema name, `forwards[0].host` for nested ones) and why."""

    property: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class TypedSpec:
    """What resources and components share: a type token, typed inputs and outputs, and checks."""

    pulumi_type: str
    description: str
    inputs: type
    outputs: type
    # Rules across properties, run on inputs whose values are all known and well typed.
    checks: Callable[[Props], list[Failure]] = lambda _props: []

    @property
    def module(self) -> str:
        return self.pulumi_type.split(":")[1]

    def input_names(self) -> dict[str, str]:
        """Schema name -> Python name of every input."""
        return {camel_case(f.name): f.name for f in dataclasses.fields(self.inputs)}

    def output_names(self) -> dict[str, str]:
        return {camel_case(f.name): f.name for f in dataclasses.fields(self.outputs)}

    def state_names(self) -> dict[str, str]:
        """Schema name -> Python name of every property the state holds (inputs and outputs)."""
        return {**self.input_names(), **self.output_names()}


@dataclass(frozen=True, kw_only=True)
class ResourceSpec(TypedSpec):
    """One custom resource of the package: the provider runs its lifecycle."""

    lifecycle: Lifecycle
    # The lifecycle's properties from the typed inputs, for what the typed API leaves out.
    derive: Callable[[Props], Props] = lambda props: props


@dataclass(frozen=True, kw_only=True)
class ComponentSpec(TypedSpec):
    """One component of the package: `component(name, props, options)` registers its children
    (resources of this package) and returns an object with `urn` and `outputs` (Python names)."""

    component: Callable[..., Any]


def camel_case(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word[:1].upper() + word[1:] for word in rest)


def snake_case(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


# --------------------------------------------------------------------------- schema


def package_schema(
    name: str,
    version: str,
    description: str,
    resources: typing.Sequence[ResourceSpec],
    components: typing.Sequence[ComponentSpec] = (),
) -> dict[str, Any]:
    """The Pulumi package schema of these resources and components."""
    type_specs: dict[str, dict[str, Any]] = {}
    claimed: dict[type, str] = {}
    resource_specs = {
        spec.pulumi_type: _resource_schema(spec, _TypeRefs(name, spec.module, type_specs, claimed))
        for spec in resources
    }
    resource_specs.update(
        {
            spec.pulumi_type: _component_schema(spec, _TypeRefs(name, spec.module, type_specs, claimed))
            for spec in components
        }
    )
    return {
        "name": name,
        "displayName": "Nexus nested-virtualization lab",
        "version": version,
        "description": description,
        "keywords": ["qemu", "nested-virtualization", "kind/native"],
        "license": "Apache-2.0",
        "resources": resource_specs,
        "types": type_specs,
        "language": {
            language: {"respectSchemaVersion": True}
            for language in ("python", "nodejs", "go", "csharp", "java")
        },
    }


@dataclass
class _TypeRefs:
    """Where a resource's enums and object types go: `types`, under the module of the first
    resource that uses them (a component reusing a resource's type refers to that one)."""

    package: str
    module: str
    types: dict[str, dict[str, Any]]
    claimed: dict[type, str]

    def ref(self, python_type: type) -> dict[str, Any]:
        token = self.claimed.get(python_type)
        if token is None:
            token = f"{self.package}:{self.module}:{python_type.__name__}"
            if token in self.types:
                raise ValueError(f"two types are named {token}")
            self.claimed[python_type] = token
            self.types[token] = {}  # claimed first: a type that refers to itself ends here
            self.types[token] = _named_type_schema(python_type, self)
        return {"$ref": f"#/types/{token}"}


def _named_type_schema(python_type: type, refs: _TypeRefs) -> dict[str, Any]:
    description = _doc(python_type)
    if issubclass(python_type, Enum):
        return {
            "type": "string",
            "description": description,
            "enum": [{"name": enum_name(member.name), "value": member.value} for member in python_type],
        }
    properties, required = _properties_schema(python_type, refs)
    return {"type": "object", "description": description, "properties": properties, "required": required}


def enum_name(python_name: str) -> str:
    """An enum member's schema name, in Pascal case as Pulumi's code generators expect: each
    language spells it its own way (TypeScript and C# `Auto`, `AllInterfaces`; Go
    `AcceleratorChoiceAuto`; Python `AUTO`, `ALL_INTERFACES`). An underscore between two
    digits stays (`X86_64`)."""
    name = ""
    for word in python_name.split("_"):
        if name and name[-1].isdigit() and word[:1].isdigit():
            name += "_"
        name += word[:1].upper() + word[1:].lower()
    return name


def _resource_schema(spec: ResourceSpec, refs: _TypeRefs) -> dict[str, Any]:
    inputs, required_inputs = _properties_schema(spec.inputs, refs)
    outputs, required_outputs = _properties_schema(spec.outputs, refs)
    return {
        "description": spec.description,
        "inputProperties": inputs,
        "requiredInputs": required_inputs,
        # The state holds the inputs too, as every resource's outputs do.
        "properties": {**inputs, **outputs},
        "required": sorted({*required_inputs, *required_outputs}),
    }


def _component_schema(spec: ComponentSpec, refs: _TypeRefs) -> dict[str, Any]:
    inputs, required_inputs = _properties_schema(spec.inputs, refs)
    outputs, required_outputs = _properties_schema(spec.outputs, refs)
    return {
        "isComponent": True,
        "description": spec.description,
        "inputProperties": inputs,
        "requiredInputs": required_inputs,
        "properties": outputs,
        "required": required_outputs,
    }


def _properties_schema(cls: type, refs: _TypeRefs) -> tuple[dict[str, Any], list[str]]:
    hints = typing.get_type_hints(cls)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for field in dataclasses.fields(cls):
        if not field.metadata.get("description"):
            raise ValueError(f"{cls.__name__}.{field.name} has no description: declare it with prop()")
        python_type, optional = _unwrap_optional(hints[field.name])
        name = camel_case(field.name)
        properties[name] = {**_type_schema(python_type, refs), "description": field.metadata["description"]}
        if not optional:
            required.append(name)
    return properties, sorted(required)


def _type_schema(python_type: Any, refs: _TypeRefs) -> dict[str, Any]:
    origin = typing.get_origin(python_type)
    if origin is list:
        (item,) = typing.get_args(python_type)
        return {"type": "array", "items": _type_schema(item, refs)}
    if origin is dict:
        return {"type": "object", "additionalProperties": {"$ref": "pulumi.json#/Any"}}
    if python_type in _SCALARS:
        return {"type": _SCALARS[python_type]}
    if isinstance(python_type, type) and (
        issubclass(python_type, Enum) or dataclasses.is_dataclass(python_type)
    ):
        return refs.ref(python_type)
    raise TypeError(f"no schema type for {python_type!r}")


_SCALARS: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _unwrap_optional(python_type: Any) -> tuple[Any, bool]:
    if typing.get_origin(python_type) in (typing.Union, types.UnionType):
        others = [arg for arg in typing.get_args(python_type) if arg is not type(None)]
        if len(others) == 1:
            return others[0], True
    return python_type, False


def _doc(python_type: type) -> str:
    return " ".join((python_type.__doc__ or "").split())


# --------------------------------------------------------------------------- check


def check_inputs(spec: TypedSpec, inputs: Mapping[str, Any]) -> list[Failure]:
    """What is wrong with these inputs (schema names, engine values); empty when nothing is.

    Unknown values (outputs of resources not made yet) pass: they are checked at `up`,
    when they are known.
    """
    failures = _check_object(spec.inputs, inputs, prefix="")
    if failures or any(value is UNKNOWN for value in inputs.values()):
        return failures
    return spec.checks(from_schema_names(spec, inputs))


def from_schema_names(spec: TypedSpec, values: Mapping[str, Any]) -> Props:
    """Schema names -> the Python names the lifecycles use (nested values are kept as they are)."""
    names = spec.state_names()
    return {names.get(key, snake_case(key)): value for key, value in values.items()}


def to_schema_names(values: Mapping[str, Any]) -> dict[str, Any]:
    return {camel_case(key): value for key, value in values.items()}


def _check_object(cls: type, values: Mapping[str, Any], prefix: str) -> list[Failure]:
    hints = typing.get_type_hints(cls)
    fields = {camel_case(field.name): field for field in dataclasses.fields(cls)}
    failures = [
        Failure(f"{prefix}{key}", f"not a property of {cls.__name__}; allowed: {', '.join(fields)}")
        for key in values
        if key not in fields
    ]
    for name, field in fields.items():
        python_type, optional = _unwrap_optional(hints[field.name])
        value = values.get(name)
        if value is None:
            if not optional:
                failures.append(Failure(f"{prefix}{name}", f"missing; allowed: {_expected(python_type)}"))
            continue
        failures += _check_value(python_type, value, f"{prefix}{name}", field.metadata)
    return failures


def _check_value(python_type: Any, value: Any, where: str, rules: Mapping[str, Any]) -> list[Failure]:
    if value is UNKNOWN:
        return []
    origin = typing.get_origin(python_type)
    if origin is list:
        if not isinstance(value, list | tuple):
            return [_refused(where, value, _expected(python_type))]
        (item,) = typing.get_args(python_type)
        return [
            failure
            for index, element in enumerate(value)
            for failure in _check_value(item, element, f"{where}[{index}]", rules)
        ]
    if origin is dict:
        return [] if isinstance(value, Mapping) else [_refused(where, value, _expected(python_type))]
    if isinstance(python_type, type) and issubclass(python_type, Enum):
        allowed = [member.value for member in python_type]
        return [] if value in allowed else [_refused(where, value, "one of " + ", ".join(allowed))]
    if dataclasses.is_dataclass(python_type):
        if not isinstance(value, Mapping):
            return [_refused(where, value, _expected(python_type))]
        return _check_object(typing.cast(type, python_type), value, prefix=f"{where}.")
    if not _is_scalar(python_type, value):
        return [_refused(where, value, _expected(python_type))]
    return _check_rules(value, where, rules)


def _is_scalar(python_type: Any, value: Any) -> bool:
    if python_type is bool or isinstance(value, bool):
        return python_type is bool and isinstance(value, bool)
    if python_type is int:
        # The engine sends every number as a float.
        return isinstance(value, int | float) and float(value).is_integer()
    if python_type is float:
        return isinstance(value, int | float)
    return isinstance(value, python_type)


def _check_rules(value: Any, where: str, rules: Mapping[str, Any]) -> list[Failure]:
    minimum, maximum, pattern = rules.get("minimum"), rules.get("maximum"), rules.get("pattern")
    if minimum is not None and value < minimum:
        return [_refused(where, value, f"at least {minimum:g}")]
    if maximum is not None and value > maximum:
        return [_refused(where, value, f"at most {maximum:g}")]
    if pattern is not None and not re.fullmatch(pattern, value):
        return [_refused(where, value, rules["rule"])]
    return []


def _refused(where: str, value: Any, allowed: str) -> Failure:
    shown = int(value) if isinstance(value, float) and value.is_integer() else value
    return Failure(where, f"got {shown!r}; allowed: {allowed}")


def _expected(python_type: Any) -> str:
    origin = typing.get_origin(python_type)
    if origin is list:
        (item,) = typing.get_args(python_type)
        return f"a list of {_expected(item)}"
    if origin is dict:
        return "an object"
    if isinstance(python_type, type) and issubclass(python_type, Enum):
        return "one of " + ", ".join(member.value for member in python_type)
    if dataclasses.is_dataclass(python_type):
        return f"an object with {', '.join(camel_case(f.name) for f in dataclasses.fields(python_type))}"
    words = {str: "a string", int: "a whole number", float: "a number", bool: "true or false"}
    return words[python_type]
