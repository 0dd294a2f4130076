"""The playground's image from a tarball on this machine (`nexus:playground.imageTarball`
or `rootfsTarball`): streamed over the stack's SSH connection into `docker load` or
`docker import -` in the VM, then tagged once per content (a dynamic provider).

Why not pulumi-command's `CopyToRemote` and a `remote.Command` that imports the copy (as
before): the copy lived in the VM's /var/tmp, was left there by a failed import, and, as
the upload and the import were two resources, switching back after a failed import
uploaded the big file again and left it there. Streaming leaves no file in the VM, and one
resource means a failed import leaves the stack's current image, and the state, as they
were: switching back changes nothing. Its `diff` also sees the image gone from the VM.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pulumi.dynamic import CreateResult, DiffResult, ResourceProvider, UpdateResult

from nexus_components.core.runner import CommandRunner, GuestError, SshRunner, check, output_tail, unreachable
from nexus_components.core.ssh import SshTarget

from ..providers import _reports_errors, _say
from . import playground

Props = dict[str, Any]
LAYER = "playground"
# Streaming into a TCG guest's Docker: a 253 MiB tarball took about 30 s here; allow slow
# links and big images.
IMPORT_TIMEOUT_SECONDS = 3600
HINTS = {
    "image-tarball": "check that {key} is a `docker save` archive (`tar -tf` lists manifest.json), "
    "or set it back; the current image and container are left as they are",
    "rootfs-tarball": "check that {key} is a root-file-system tar (`tar -tf` lists bin/ or usr/), "
    "or set it back; the current image and container are left as they are",
}


def _runner(props: Props) -> SshRunner:
    target = SshTarget(
        props["ssh_host"], int(props["ssh_port"]), props["username"], Path(props["private_key"])
    )
    return SshRunner(target)


def import_tarball(runner: CommandRunner, props: Props) -> Props:
    """Load or import the tarball, tag it; stops at the first failing command with one error
    that names the config key, the command and its output."""
    kind, key, tarball = props["kind"], props["key"], Path(props["path"])
    tag = playground.tarball_tag(props["container"], props["digest"])
    hint = HINTS[kind].format(key=key)
    argv = list(playground.LOAD_IMAGE) if kind == "image-tarball" else playground.import_rootfs(tag)
    verb = "load" if kind == "image-tarball" else "import"
    size_mib = tarball.stat().st_size / (1 << 20)
    _say("playground", f"streaming {tarball.name} ({size_mib:.0f} MiB) into `{' '.join(argv)}` in the VM")
    result = runner.run(argv, input_file=tarball, timeout=IMPORT_TIMEOUT_SECONDS)
    check(result, layer=LAYER, what=f"{verb} {key} ({tarball})", hint=hint)
    if kind == "image-tarball":
        loaded = playground.loaded_image(result.stdout)
        if loaded is None:
            raise GuestError(
                f"{LAYER}: {key} ({tarball}) loaded, but `docker load` named no image",
                command=argv,
                output=output_tail(result.output) or "(none)",
                hint=hint,
            )
        tagged = runner.run(playground.tag_image(loaded, tag), timeout=60)
        check(tagged, layer=LAYER, what=f"tag the image {key} loaded", hint=hint)
    inspected = runner.run(playground.image_id(tag), timeout=60)
    image_id = check(inspected, layer=LAYER, what=f"read the id of the image {key} gave", hint=hint).stdout
    _say("playground", f"{key}: image {tag} ({image_id.strip()[:19]})")
    return {**props, "tag": tag, "image_id": image_id.strip()}


@_reports_errors
class TarballImageProvider(ResourceProvider):
    """One tarball's image in the VM; the id is its tag."""

    # A new content, kind, container name or VM disk is a new image (a new tag).
    REPLACE_KEYS = ("kind", "digest", "container", "disk_id")

    def create(self, props: Props) -> CreateResult:
        outs = import_tarball(_runner(props), props)
        return CreateResult(id_=outs["tag"], outs=outs)

    def diff(self, _id: str, olds: Props, news: Props) -> DiffResult:
        replaces = [key for key in self.REPLACE_KEYS if olds.get(key) != news.get(key)]
        if replaces:
            return DiffResult(changes=True, replaces=replaces)
        # The tarball's path may change with its content the same: nothing to do.
        if self._gone_from_vm(olds):
            _say("playground", f"image {olds['tag']} is gone from the VM; up imports {news['key']} again")
            return DiffResult(changes=True)
        return DiffResult(changes=False)

    def update(self, _id: str, _olds: Props, news: Props) -> UpdateResult:
        return UpdateResult(outs=import_tarball(_runner(news), news))

    def delete(self, _id: str, props: Props) -> None:
        # Superseded (or the playground turned off): its tag goes, and with it the image
        # unless something else holds it. A VM that does not answer has nothing to clean.
        _runner(props).run(playground.remove_image(props["tag"]), timeout=120)

    @staticmethod
    def _gone_from_vm(props: Props) -> bool:
        result = _runner(props).run(playground.image_id(props["tag"]), timeout=60)
        if unreachable(result):
            return False  # the VM is down: its own diff says so
        return "No such image" in result.output
