"""The benchmark's errors, under the package's one error root."""

from __future__ import annotations

from nexus_components.core.errors import NexusError


class BenchError(NexusError):
    """The benchmark could not start or a layer could not be measured."""
