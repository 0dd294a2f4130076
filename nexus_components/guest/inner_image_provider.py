"""The inner VM's cloud image in the host's image cache (a dynamic provider).

The same download module and cache as the VM's own image (`nexus:image`): fetched or
copied once, its SHA-256 checked, kept when a stack is destroyed. A dynamic provider,
like the VM's `BaseImageProvider`, because the download belongs to `up`, not to the
program: `preview` must not fetch a gigabyte. Its outputs (digest, format) name the copy
in the VM, which pulumi-command makes (guest/components.py `InnerImage`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pulumi.dynamic import CreateResult, DiffResult, ResourceProvider

from .. import download
from ..providers import _reports_errors, _say
from . import inner_image

Props = dict[str, Any]
URL_KEY = "nexus:innerVm.image.url"
SHA256_KEY = "nexus:innerVm.image.sha256"


@_reports_errors
class InnerImageProvider(ResourceProvider):
    """Fetch into the shared cache; the id is the image's digest. Delete keeps the cache."""

    KEYS = ("url", "sha256", "cache_dir")

    def create(self, props: Props) -> CreateResult:
        source = download.ImageSource(
            url=props["url"], sha256=props.get("sha256"), url_key=URL_KEY, sha256_key=SHA256_KEY
        )
        name = Path(props["url"]).name or "image"
        image = download.fetch_image(
            source,
            Path(props["cache_dir"]),
            progress=download.log_progress(lambda line: _say("inner-image", line), name),
        )
        boot = inner_image.BootImage.of(image.sha256, inner_image.detect_format(image.path))
        outs = {
            **props,
            "path": str(image.path),
            "digest": image.sha256,
            "format": boot.format,
            "vm_path": boot.path,
            "size": image.size,
        }
        return CreateResult(id_=image.sha256, outs=outs)

    def diff(self, _id: str, olds: Props, news: Props) -> DiffResult:
        replaces = [key for key in self.KEYS if olds.get(key) != news.get(key)]
        if not Path(olds.get("path", "")).is_file():
            replaces.append("path")  # the cache was cleared: fetch it again
        return DiffResult(changes=bool(replaces), replaces=replaces)

    def delete(self, _id: str, _props: Props) -> None:
        pass  # the cache is shared by all stacks, on purpose
