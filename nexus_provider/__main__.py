"""The plugin's entry point: `python -m nexus_provider <engine address>` (pulumi-resource-nexus)."""

from __future__ import annotations

import sys

from nexus_provider import VERSION
from nexus_provider.provider import NexusProvider
from nexus_provider.server import serve

if __name__ == "__main__":
    serve(sys.argv[1:], VERSION, NexusProvider())
