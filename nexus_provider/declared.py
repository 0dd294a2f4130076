"""A resource of this package declared by a component (the Lab, or the guest layers' components)."""

from __future__ import annotations

from typing import Any

import pulumi

from . import VERSION
from .spec import ResourceSpec, camel_case, to_schema_names


class PackageResource(pulumi.CustomResource):
    """A `nexus` resource, served by this package's provider at this version: its inputs by their
    Python names, its outputs read with `output(python_name)`."""

    def __init__(
        self, spec: ResourceSpec, name: str, inputs: dict[str, Any], opts: pulumi.ResourceOptions
    ) -> None:
        outputs = dict.fromkeys(spec.output_names())
        super().__init__(
            spec.pulumi_type,
            name,
            {**to_schema_names(inputs), **outputs},
            pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(version=VERSION)),
        )

    def output(self, python_name: str) -> pulumi.Output[Any]:
        value: pulumi.Output[Any] = getattr(self, camel_case(python_name))
        return value
