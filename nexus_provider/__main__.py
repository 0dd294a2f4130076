"""The plugin's entry point: `python -m nexus_provider <engine address>` (pulumi-resource-nexus)."""

from __future__ import annotations

import os
import sys

from nexus_provider import VERSION, early_banner

if __name__ == "__main__":
    # Before the provider's imports, which take most of the plugin's start-up.
    early_banner.start(os.environ)

    from nexus_provider.provider import NexusProvider
    from nexus_provider.server import serve

    serve(sys.argv[1:], VERSION, NexusProvider())
