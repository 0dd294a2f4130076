"""The inner VM's cloud image: into the host's image cache, then into the VM (a dynamic provider).

The same download module and cache as the VM's own image (`nexus:image`): fetched or
copied once, its SHA-256 checked, kept when a stack is destroyed. Then streamed over the
stack's SSH connection into the VM's IMAGES_DIR, named by its digest, once per digest.

Why a dynamic provider and not pulumi-command's `CopyToRemote`: the engine hashes a
`FileAsset` when the resource is registered, at `preview` too, so the file must exist
before `up` runs; measured here, a preview fails with "failed to compute asset hash ...
no such file or directory" while the image is not yet downloaded, and downloading a
gigabyte in `preview` is not acceptable. A provider
also sees a copy that went missing in the VM (`diff` looks) and copies it again.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from pulumi.dynamic import CreateResult, DiffResult, ResourceProvider, UpdateResult

from nexus_components.core import download
from nexus_components.core.runner import (
    SSH_UNREACHABLE,
    CommandResult,
    GuestError,
    SshRunner,
    check,
    output_tail,
)
from nexus_components.core.ssh import SshTarget

from ..providers import _reports_errors, _say
from . import inner_image
from .inner_vm import IMAGES_DIR

Props = dict[str, Any]
LAYER = "inner VM image"
URL_KEY = "nexus:innerVm.image.url"
SHA256_KEY = "nexus:innerVm.image.sha256"
# Streaming into a TCG guest: 265 MB took about 13 s here; allow slow links and big images.
COPY_TIMEOUT_SECONDS = 3600


def _runner(props: Props) -> SshRunner:
    target = SshTarget(
        props["ssh_host"], int(props["ssh_port"]), props["username"], Path(props["private_key"])
    )
    return SshRunner(target)


@_reports_errors
class InnerImageProvider(ResourceProvider):
    """Fetch into the shared cache, copy into the VM; the id is the image's digest."""

    KEYS = ("url", "sha256", "cache_dir", "disk_id")

    def create(self, props: Props) -> CreateResult:
        outs = self._fetch_and_copy(props)
        return CreateResult(id_=outs["digest"], outs=outs)

    def diff(self, _id: str, olds: Props, news: Props) -> DiffResult:
        replaces = [key for key in self.KEYS if olds.get(key) != news.get(key)]
        changes = list(replaces)
        if not replaces:
            if not Path(olds.get("path", "")).is_file():
                changes.append("path")  # the host cache was cleared: fetch it again
            elif self._missing_in_vm(olds):
                changes.append("vm_path")  # e.g. the VM's disk was recreated: copy it again
        # The old copy goes first: the new one may have the same digest, hence the same path.
        return DiffResult(changes=bool(changes), replaces=replaces, delete_before_replace=True)

    def update(self, _id: str, _olds: Props, news: Props) -> UpdateResult:
        return UpdateResult(outs=self._fetch_and_copy(news))

    def delete(self, _id: str, props: Props) -> None:
        # The copy in the VM goes (a replaced image does not fill the VM's disk); the host
        # cache is shared by all stacks and stays. An unreachable VM has nothing to clean.
        if props.get("vm_path"):
            _runner(props).run(inner_image.remove_argv(props["vm_path"]), timeout=120)

    @staticmethod
    def _missing_in_vm(props: Props) -> bool:
        result = _runner(props).run(inner_image.size_argv(props.get("vm_path", "")), timeout=60)
        if result.returncode == SSH_UNREACHABLE:
            return False  # the VM is down: its own diff says so, and up copies after it returns
        return not (result.ok and inner_image.same_size(result.stdout, props.get("size")))

    @staticmethod
    def _fetch_and_copy(props: Props) -> Props:
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
        runner = _runner(props)
        size = runner.run(inner_image.size_argv(boot.path), timeout=60)
        if size.ok and inner_image.same_size(size.stdout, image.size):
            _say("inner-image", f"{boot.path} is already in the VM")
        else:
            _copy_into_vm(runner, image.path, boot.path, props["username"])
        return {
            **props,
            "path": str(image.path),
            "digest": image.sha256,
            "format": boot.format,
            "vm_path": boot.path,
            "size": image.size,
        }


def _copy_into_vm(runner: SshRunner, local: Path, remote: str, username: str) -> None:
    check(
        runner.run(inner_image.prepare_images_dir_argv(username), timeout=120),
        layer=LAYER,
        what=f"create {IMAGES_DIR} for the login user",
        hint="check that the login user has passwordless sudo in the VM",
    )
    shown = inner_image.receive_argv(remote)
    started = time.monotonic()
    try:
        with local.open("rb") as stream:
            completed = subprocess.run(
                runner.ssh_argv(shown),
                stdin=stream,
                capture_output=True,
                timeout=COPY_TIMEOUT_SECONDS,
                check=False,
            )
    except subprocess.TimeoutExpired as error:
        raise GuestError(
            f"{LAYER}: copying {local} into the VM took more than {COPY_TIMEOUT_SECONDS} s",
            command=shown,
            hint="check the VM's load and free space, then `pulumi up` again",
        ) from error
    seconds = time.monotonic() - started
    result = CommandResult(
        tuple(shown),
        completed.returncode,
        completed.stdout.decode(errors="replace"),
        completed.stderr.decode(errors="replace"),
        seconds,
    )
    check(
        result,
        layer=LAYER,
        what=f"copy {local.name} into {remote}",
        hint="check the VM's free space (`df -h /var/lib` in the VM; nexus:vm.diskSize)",
    )
    size = runner.run(inner_image.size_argv(remote), timeout=60)
    expected = local.stat().st_size
    if not inner_image.same_size(size.stdout, expected):
        raise GuestError(
            f"{LAYER}: {remote} in the VM has {size.stdout.strip() or 'no'} bytes, expected {expected}",
            command=size.argv,
            output=output_tail(size.output),
            hint="`pulumi up` copies it again; check the VM's free space",
        )
    mib = expected / (1 << 20)
    _say("inner-image", f"copied {local.name} into the VM: {mib:.0f} MiB in {seconds:.1f} s")
