"""The inner VM image's dynamic provider, kept for stacks made by earlier releases (they name
it in their state); the work is lifecycles.InnerImageCopy (see providers.py)."""

from __future__ import annotations

from . import lifecycles
from .providers import DelegatingProvider


class InnerImageProvider(DelegatingProvider):
    lifecycle = lifecycles.InnerImageCopy()
