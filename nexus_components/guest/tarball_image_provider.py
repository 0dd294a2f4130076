"""A playground tarball's dynamic provider, kept for stacks made by earlier releases (they name
it in their state); the work is lifecycles.TarballImage (see providers.py)."""

from __future__ import annotations

from . import lifecycles
from .providers import DelegatingProvider


class TarballImageProvider(DelegatingProvider):
    lifecycle = lifecycles.TarballImage()
