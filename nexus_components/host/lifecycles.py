"""The host layer's create/diff/update/read/delete, on plain property dicts.

The `nexus` provider plugin (`nexus_provider/`, typed resources with their own type
tokens) runs these. No Pulumi import here, so tests can drive them directly.

Every `create` takes over what is already on the machine when it is the stack's own (its
key pair, its disk made on the same base image, a QEMU running this very command line):
so an `up` interrupted before its state was saved converges, and a stack whose state was
upgraded from the earlier dynamic providers keeps its disk (scripts/upgrade-stack).

Every `diff` looks at the machine: a VM that is no longer running, or a disk that
vanished, shows up in `pulumi preview` as something to start or create again.

Progress goes to stderr, which the engine shows under the stack while a step runs.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from nexus_components.core import cloudinit, download, seed_iso, ssh
from nexus_components.core.errors import NexusError, VmError
from nexus_components.core.files import remove_quietly
from nexus_components.core.lifecycle import Created, Diff, Lifecycle, Props, changed, in_preview
from nexus_components.core.progress import say
from nexus_components.host import disk, mounts, shares, snapshots, vm_process
from nexus_components.host.hostfacts import host_os
from nexus_components.host.paths import (
    DiskRecord,
    StateDirMarker,
    VmPaths,
    make_state_dir,
    remove_stack_files,
)
from nexus_components.host.qemu_argv import DISK_ID
from nexus_components.host.settings import NetworkConfig, PortForward, check_disk_fits_base


def recorded_pid(props: Props) -> int | None:
    return int(props.get("pid") or 0) or None


def vm_network(props: Props) -> NetworkConfig:
    """The VM's forwarded ports. Numbers come back from the engine as floats."""
    return NetworkConfig(
        bind_address=props["bind_address"],
        ssh_port=int(props["ssh_port"]),
        forwards=tuple(
            PortForward(int(forward["host"]), int(forward["guest"]), forward["protocol"])
            for forward in props["forwards"]
        ),
    )


def vm_paths(props: Props) -> VmPaths:
    qmp_tcp_port = props.get("qmp_tcp_port")
    return VmPaths(Path(props["state_dir"]), int(qmp_tcp_port) if qmp_tcp_port else None)


class StateDir(Lifecycle):
    """The stack's directory; deleted last, taking every file the stack made with it."""

    def create(self, props: Props) -> Created:
        created = make_state_dir(vm_paths(props), stack=props["stack"])
        return Created(props["state_dir"], {**props, "created_dirs": [str(d) for d in created]})

    def diff(self, olds: Props, news: Props) -> Diff:
        replaces = changed(olds, news, ("state_dir",))
        if not Path(olds["state_dir"]).is_dir():
            replaces = ["state_dir"]
        return Diff(bool(replaces), replaces, delete_before_replace=True)

    def delete(self, props: Props) -> None:
        # A QEMU whose create was interrupted (Ctrl-C) never reached the state; its pid
        # file is still here, and it must not outlive the stack.
        paths = vm_paths(props)
        vm_process.stop(paths, powerdown_timeout=10, log=lambda line: say("state", line))
        # The marker names the directories up created; the state is the fallback if it is gone.
        recorded = [Path(d) for d in props["created_dirs"]] if "created_dirs" in props else None
        created = None if StateDirMarker.read(paths) is not None else recorded
        for kept in remove_stack_files(paths, created):
            say("state", f"kept {kept}: it holds files nexus-nested-vm did not create")


class BaseImage(Lifecycle):
    """The cloud image in the shared cache. Deleting a stack keeps the cache, on purpose."""

    KEYS = ("url", "sha256", "cache_dir")

    def create(self, props: Props) -> Created:
        image = download.fetch_image(
            self.source(props),
            Path(props["cache_dir"]),
            progress=self._progress(props, ("downloading", "downloaded")),
        )
        return self._created(props, image)

    def receive(
        self, props: Props, chunks: Iterable[bytes], expected: str, *, total: int | None, start: int = 0
    ) -> Created:
        """The create of a lab's server that cannot reach the image's source: the user's machine
        sends the image (remote.send_image), and it is cached and checked here as a download is.
        `start`: the bytes follow those an earlier copy that broke off left (see `partial`)."""
        image = download.receive_image(
            self.source(props),
            Path(props["cache_dir"]),
            chunks,
            expected,
            total=total,
            start=start,
            progress=self._progress(props, ("receiving", "received")),
        )
        return self._created(props, image)

    def partial(self, props: Props) -> int:
        """How many bytes of the image an earlier copy that broke off left in the cache."""
        return download.partial_size(Path(props["cache_dir"]), self.source(props))

    @staticmethod
    def source(props: Props) -> download.ImageSource:
        return download.ImageSource(url=props["url"], sha256=props.get("sha256"))

    @staticmethod
    def _progress(props: Props, verbs: tuple[str, str]) -> download.ProgressFn:
        name = Path(props["url"]).name or "image"
        return download.log_progress(lambda line: say("image", line), name, verbs=verbs)

    @staticmethod
    def _created(props: Props, image: download.CachedImage) -> Created:
        # Checked here, before any of the VM's own resources exist.
        virtual_size = disk.virtual_size(props["qemu_img"], image.path)
        check_disk_fits_base(props["disk_size"], virtual_size)
        outs = {
            **props,
            "path": str(image.path),
            "digest": image.sha256,
            "size": image.size,
            "virtual_size": virtual_size,
        }
        return Created(image.sha256, outs)

    def diff(self, olds: Props, news: Props) -> Diff:
        if olds.get("virtual_size") and not changed(olds, news, self.KEYS):
            check_disk_fits_base(news["disk_size"], int(olds["virtual_size"]))
        replaces = changed(olds, news, self.KEYS)
        if not Path(olds.get("path", "")).is_file():
            replaces.append("path")
        return Diff(bool(replaces), replaces)


class SshKey(Lifecycle):
    """The per-stack key pair, generated unless the user configured their own."""

    def create(self, props: Props) -> Created:
        paths = vm_paths(props)
        if props.get("private_key_file"):
            private_key = Path(props["private_key_file"]).expanduser()
            public_key = Path(props["public_key_file"]).expanduser()
            for path, key in ((private_key, "sshPrivateKeyFile"), (public_key, "sshPublicKeyFile")):
                if not path.is_file():
                    raise NexusError(
                        f"nexus:guest.{key}: {path} does not exist",
                        hint=f"point nexus:guest.{key} at an existing key file, or unset both key settings",
                    )
            generated = False
        else:
            private_key, public_key = paths.ssh_private_key, paths.ssh_public_key
            if not private_key.is_file():
                ssh.generate_key_pair(private_key, comment=props["comment"])
            generated = True
        outs = {
            **props,
            "private_key_path": str(private_key),
            "public_key": public_key.read_text().strip(),
            "generated": generated,
        }
        return Created(str(private_key), outs)

    def diff(self, olds: Props, news: Props) -> Diff:
        replaces = changed(olds, news, ("state_dir", "private_key_file", "public_key_file"))
        if not Path(olds["private_key_path"]).is_file():
            replaces.append("private_key_path")
        return Diff(bool(replaces), replaces, delete_before_replace=True)

    def delete(self, props: Props) -> None:
        if props.get("generated"):
            paths = vm_paths(props)
            remove_quietly(paths.ssh_private_key)
            remove_quietly(paths.ssh_public_key)


class OverlayDisk(Lifecycle):
    """The VM's qcow2 disk on top of the base image; grows in place, never shrinks."""

    has_update = True

    def create(self, props: Props) -> Created:
        paths = vm_paths(props)
        adopted = self._adopt(props, paths)
        if adopted is not None:
            return Created(adopted, props)
        # A fresh id per creation: the VM depends on it, so a re-created disk re-creates the VM.
        disk_id = f"{paths.overlay_disk}@{uuid.uuid4().hex[:12]}"
        remove_quietly(paths.disk_record)
        disk.create_overlay(
            props["qemu_img"],
            Path(props["base_path"]),
            paths.overlay_disk,
            int(props["size_bytes"]),
            size_key="nexus:vm.diskSize",
        )
        DiskRecord(disk_id, props["base_digest"], props["base_path"]).write(paths)
        return Created(disk_id, props)

    @staticmethod
    def _adopt(props: Props, paths: VmPaths) -> str | None:
        """The id of the stack's disk already on the machine, if it is the one to use: made by
        this lab (its record, written by a create or by the upgrade of an earlier version's
        state) on the same base image. Then it is kept, files and all, grown if need be.
        Anything else (no record, another base image) is made anew, as before."""
        record = DiskRecord.read(paths)
        if record is None or not paths.overlay_disk.is_file():
            return None
        qemu_img, wanted = props["qemu_img"], int(props["size_bytes"])
        backing = disk.backing_file(qemu_img, paths.overlay_disk)
        same_base = backing is not None and Path(backing).resolve() == Path(props["base_path"]).resolve()
        if record.base_digest != props["base_digest"] or not same_base:
            say("disk", f"{paths.overlay_disk} was made on another base image; making a new disk")
            return None
        size = disk.virtual_size(qemu_img, paths.overlay_disk)
        if size > wanted:
            raise VmError(
                f"nexus:vm.diskSize: got {props['disk_size']!r}, but the stack's disk {paths.overlay_disk} "
                f"is already {size} bytes; shrinking is refused (it would cut off the guest's file system)",
                hint=f"set nexus:vm.diskSize to {-(-size // (1 << 30))}G or more",
            )
        if size < wanted:
            OverlayDisk._grow(paths, qemu_img, wanted)
        say("disk", f"kept the stack's disk {paths.overlay_disk} (same base image): nothing on it is lost")
        return record.id

    @staticmethod
    def _grow(paths: VmPaths, qemu_img: str, size_bytes: int) -> None:
        if vm_process.running_pid(paths) is not None:
            # QEMU holds a write lock on the disk: grow it through the running VM instead.
            vm_process.block_resize(paths, DISK_ID, size_bytes)
        else:
            disk.resize_offline(qemu_img, paths.overlay_disk, size_bytes)

    def diff(self, olds: Props, news: Props) -> Diff:
        if news["size_bytes"] < olds["size_bytes"]:
            raise VmError(
                f"nexus:vm.diskSize: shrinking the disk from {olds['disk_size']} to {news['disk_size']} "
                "is refused "
                "(it would cut off the guest's file system)",
                hint=f"set nexus:vm.diskSize back to {olds['disk_size']} or more; "
                "to start from a smaller disk, `pulumi destroy` first",
            )
        replaces = changed(olds, news, ("state_dir", "base_digest", "base_path"))
        if not vm_paths(olds).overlay_disk.is_file():
            replaces.append("path")
        changes = bool(replaces) or news["size_bytes"] != olds["size_bytes"]
        return Diff(changes, replaces, delete_before_replace=True)

    def update(self, olds: Props, news: Props) -> Props:
        self._grow(vm_paths(news), news["qemu_img"], int(news["size_bytes"]))
        say("disk", f"grew the disk from {olds['disk_size']} to {news['disk_size']}")
        return news

    def delete(self, props: Props) -> None:
        paths = vm_paths(props)
        remove_quietly(paths.overlay_disk)
        remove_quietly(paths.disk_record)


class CloudInitSeed(Lifecycle):
    """user-data and meta-data as a NoCloud ISO (label `cidata`)."""

    has_update = True

    def create(self, props: Props) -> Created:
        return Created(str(vm_paths(props).seed_iso), self._write(props))

    def diff(self, olds: Props, news: Props) -> Diff:
        keys = tuple(key for key in news if not key.startswith("__"))
        differs = changed(olds, news, keys)
        if not vm_paths(olds).seed_iso.is_file():
            differs.append("seed_iso")
        return Diff(bool(differs))

    def update(self, olds: Props, news: Props) -> Props:
        return self._write(news)

    def delete(self, props: Props) -> None:
        paths = vm_paths(props)
        remove_quietly(paths.seed_iso)
        remove_quietly(paths.user_data)

    @staticmethod
    def spec(props: Props) -> cloudinit.CloudInitSpec:
        """The seed's cloud-config, from the resource's properties."""
        return cloudinit.CloudInitSpec(
            username=props["username"],
            ssh_public_key=props["public_key"],
            hostname=props["hostname"],
            guest_arch=props["arch"],
            install_packages=props["install_packages"],
            extra_packages=tuple(props["packages"]),
            extra_user_data=props["user_data"],
        )

    @staticmethod
    def _write(props: Props) -> Props:
        paths = vm_paths(props)
        spec = CloudInitSeed.spec(props)
        user_data = cloudinit.render_user_data(spec)
        instance_id = cloudinit.instance_id_for(user_data, props["hostname"])
        meta_data = cloudinit.render_meta_data(instance_id=instance_id, hostname=props["hostname"])
        seed_iso.write_seed_iso(
            paths.seed_iso, {"user-data": user_data.encode(), "meta-data": meta_data.encode()}
        )
        paths.user_data.write_text(user_data)
        return {**props, "instance_id": instance_id}


def ensure_firmware_vars(paths: VmPaths, code: str | None, template: str | None) -> None:
    """The VM's own writable UEFI variable store, kept across restarts like its disk."""
    if code is None or paths.firmware_vars.exists():
        return
    if template:
        shutil.copyfile(template, paths.firmware_vars)
    else:
        # Without a template, an all-zero store the size of the code image (pflash
        # units must match) is what edk2 initialises on first boot.
        with paths.firmware_vars.open("wb") as store:
            store.truncate(Path(code).stat().st_size)


def _ssh_target(props: Props) -> ssh.SshTarget:
    return ssh.SshTarget(
        host=props["ssh_host"],
        port=int(props["ssh_port"]),
        user=props["username"],
        private_key=Path(props["private_key"]),
    )


# The guest's root partition and file system grown to the disk's size (growpart exits 1 when
# there is nothing to grow). cloud-init does the same at every boot; this is for a disk grown
# while the VM runs. A fixed script: no value of the stack's settings is pasted into it.
GROW_ROOT_FS = """set -e
source=$(findmnt -no SOURCE /)
name=${source#/dev/}
disk=/dev/$(lsblk -no PKNAME "$source" | head -n 1)
partition=$(cat "/sys/class/block/$name/partition")
status=0; sudo -n growpart "$disk" "$partition" >/tmp/nexus-growpart.log 2>&1 || status=$?
if [ "$status" -gt 1 ]; then cat /tmp/nexus-growpart.log >&2; exit "$status"; fi
case $(findmnt -no FSTYPE /) in
  xfs) sudo -n xfs_growfs / >/dev/null ;;
  *) sudo -n resize2fs "$source" >/dev/null 2>&1 ;;
esac
df -B1 --output=size / | tail -n 1 | tr -d ' '"""


def suspended(props: Props) -> bool:
    """nexus:vm.state is suspended (unset, as in a stack from before it existed: running)."""
    return props.get("state") == "suspended"


class QemuVm(Lifecycle):
    """The QEMU process. `up` returns once SSH answers and cloud-init is done."""

    has_update = True
    RESTART_KEYS = (
        "argv",
        "ssh_port",
        "forwards",
        "bind_address",
        "username",
        "private_key",
        "instance_id",
        "mounts",
    )

    def login_hint(self, target: ssh.SshTarget) -> str:
        """How the user logs into the VM, for the ready line: here, the command itself."""
        return target.interactive_command()

    def create(self, props: Props) -> Created:
        started = self._start(props, adopt=True)
        if suspended(props):
            return Created(props["name"], self._suspend(started))
        return Created(props["name"], started)

    def diff(self, olds: Props, news: Props) -> Diff:
        replaces = changed(olds, news, ("state_dir", "overlay_id"))
        restart = changed(olds, news, self.RESTART_KEYS)
        grown = changed(olds, news, ("disk_size",))
        if suspended(olds) != suspended(news):
            restart.append("state")  # suspended or resumed (update), not restarted
        elif suspended(news):
            pass  # meant to be down: its QEMU is not looked for
        elif vm_process.running_pid(vm_paths(olds), recorded_pid(olds)) is None:
            restart.append("running")  # killed or host rebooted: start it again on the same disk
        elif not (replaces or restart) and "ssh_port" in olds and self._hangs(olds):
            say("vm", "QEMU runs but the guest does not answer on SSH (it hangs); up restarts it")
            restart.append("answering")  # power-cycled on the same disk, as a user would
        return Diff(bool(replaces or restart or grown), replaces, delete_before_replace=True)

    @staticmethod
    def _hangs(olds: Props) -> bool:
        # A guest that greets but runs no command (a CPU stuck under a nested KVM guest) is
        # found by a login, most of a second under TCG: `up` logs in; a preview, which heals
        # nothing, reads the banner only (a wholly stuck guest sends none).
        return vm_process.guest_hangs(_ssh_target(olds), login=not in_preview())

    def update(self, olds: Props, news: Props) -> Props:
        if suspended(news):
            if suspended(olds):
                return {**news, "pid": 0, "ready_seconds": olds.get("ready_seconds")}
            running = vm_process.running_pid(vm_paths(olds), recorded_pid(olds)) is not None
            restart = changed(olds, news, self.RESTART_KEYS)
            # A VM that is down, or whose command line changes, is booted as declared first.
            if running and not restart:
                return self._suspend(
                    {**news, "pid": olds.get("pid"), "ready_seconds": olds.get("ready_seconds")}
                )
            return self._suspend(self._restart(olds, news))
        if suspended(olds):
            return self._resume(news)
        if self._grew_in_place(olds, news):
            return {**news, "pid": olds.get("pid"), "ready_seconds": olds.get("ready_seconds")}
        return self._restart(olds, news)

    def _restart(self, olds: Props, news: Props) -> Props:
        self._stop(olds)
        # Saved state of a suspension is stale once the VM boots afresh.
        snapshots.drop_suspended_state(vm_paths(news), running=False)
        started = self._start(news)
        if olds.get("mounts") and not news.get("mounts"):
            # The last mount went: its fstab entry goes too (the VM restarted without the share).
            shares.mount_in_guest(_ssh_target(news), [])
        return started

    @staticmethod
    def _suspend(props: Props) -> Props:
        started = time.monotonic()
        snapshots.suspend(vm_paths(props), log=lambda line: say("vm", line))
        say("vm", f"suspended in {time.monotonic() - started:.1f} s; QEMU stopped")
        return {**props, "pid": 0}

    @staticmethod
    def _wait_for_clock(target: ssh.SshTarget, paths: VmPaths, deadline: float) -> None:
        while True:
            problem = snapshots.resync_clock(target, timeout=60)
            if problem is None:
                return
            if vm_process.running_pid(paths) is None:
                raise VmError("QEMU exited while the VM resumed", output=vm_process.serial_tail(paths))
            if time.monotonic() >= deadline:
                raise VmError(
                    f"the resumed VM did not answer SSH in time: {problem}",
                    output=vm_process.serial_tail(paths),
                    hint="run `up` again (the saved state is kept); raise nexus:vm.bootTimeoutSeconds "
                    "if the host is just slow",
                )
            time.sleep(0.5)

    def _resume(self, props: Props) -> Props:
        paths = vm_paths(props)
        argv, why_not = snapshots.resume_argv(paths, props["argv"])
        if argv is None:
            say("vm", f"{why_not}; booting the VM")
            return self._restart(props, props)
        vm_process.stop(paths, log=lambda line: say("vm", line))
        vm_process.check_ports_free(vm_network(props), qmp_tcp_port=paths.qmp_tcp_port)
        say("vm", "resuming the suspended VM from its disk")
        started = time.monotonic()
        try:
            pid = vm_process.launch(argv, paths)
        except VmError as error:
            # Saved by another QEMU or machine type (a change while suspended): boot instead.
            say("vm", f"could not resume ({error.what}); dropping the saved state and booting the VM")
            return self._restart(props, props)
        say("vm", f"QEMU loaded the saved state in {time.monotonic() - started:.1f} s; waiting for SSH")
        target = _ssh_target(props)
        try:
            # One SSH login both shows the guest answers and sets its clock (it resumed with
            # the clock it had when suspended); cloud-init finished before the suspend.
            self._wait_for_clock(target, paths, started + props["boot_timeout_seconds"])
            seconds = time.monotonic() - started
            snapshots.drop_suspended_state(paths, running=True)
        except BaseException:
            vm_process.stop(paths, powerdown_timeout=5)
            raise
        say("vm", f"resumed in {seconds:.1f} s: {self.login_hint(target)}")
        return {**props, "pid": pid, "ready_seconds": round(seconds, 1)}

    def _grew_in_place(self, olds: Props, news: Props) -> bool:
        """Only the disk grew (OverlayDisk grew it through QEMU first) and the VM runs: its root
        file system grows now, over SSH. No SSH step on a create: a new disk's first boot
        grows it (cloud-init), and so does any boot after a restart."""
        if changed(olds, news, (*self.RESTART_KEYS, "state_dir", "overlay_id")) or not changed(
            olds, news, ("disk_size",)
        ):
            return False
        if vm_process.running_pid(vm_paths(olds), recorded_pid(olds)) is None:
            return False
        argv = _ssh_target(news).argv(["sh", "-c", GROW_ROOT_FS], connect_timeout=30)
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
        except subprocess.TimeoutExpired:
            result = None
        if result is None or result.returncode != 0:
            output = "no answer within 300 s" if result is None else (result.stderr or result.stdout).strip()
            say(
                "vm",
                f"could not grow the root file system over SSH ({output}); restarting the VM (boots grow it)",
            )
            return False
        say("vm", f"grew the root file system to {result.stdout.strip()} bytes")
        return True

    def delete(self, props: Props) -> None:
        self._stop(props)
        paths = vm_paths(props)
        for path in (
            paths.connect_script,
            paths.ssh_config,
            paths.serial_log,
            paths.qemu_log,
            paths.firmware_vars,
        ):
            remove_quietly(path)

    def read(self, id_: str, props: Props) -> Props:
        pid = vm_process.running_pid(vm_paths(props), recorded_pid(props))
        return {**props, "pid": pid or 0}

    @staticmethod
    def _stop(props: Props) -> None:
        # The recorded pid finds the VM even if its pid file or state directory is gone.
        vm_process.stop(vm_paths(props), recorded_pid=recorded_pid(props), log=lambda line: say("vm", line))
        # The guest's mounts went with it; host folders are never touched.
        shares.stop_virtiofsd(vm_paths(props))
        shares.stop_reverse_sshfs(vm_paths(props))

    def _start(self, props: Props, *, adopt: bool = False) -> Props:
        paths = vm_paths(props)
        mount_list = mounts.from_props(props.get("mounts"))
        leftover = vm_process.vm_pids(paths)
        # An up killed while the VM booted (Ctrl-C twice) leaves QEMU running with this
        # very command line. Stopping it mid-boot would cut cloud-init's first run short
        # and leave the guest half set up on this disk, so the create waits for it instead.
        # So does a stack whose state was upgraded from the dynamic providers: its VM runs on.
        adopted = adopt and len(leftover) == 1 and vm_process.runs_argv(leftover[0], props["argv"])
        if not adopted:
            # Any other QEMU of ours would hold the disk and the ports.
            vm_process.stop(paths, log=lambda line: say("vm", line))
        network = vm_network(props)
        if not adopted:
            vm_process.check_ports_free(network, qmp_tcp_port=paths.qmp_tcp_port)
            ensure_firmware_vars(paths, props.get("firmware_code"), props.get("firmware_vars_template"))
        target = _ssh_target(props)
        paths.connect_script.write_text(ssh.connect_script(target))
        paths.connect_script.chmod(0o755)
        paths.ssh_config.write_text(ssh.ssh_config_entry(props["name"], target))

        if adopted:
            pid = leftover[0]
            # An interrupted up's QEMU, or the VM of a stack whose state was just upgraded.
            say("vm", f"QEMU (pid {pid}) already runs this VM with this command line; waiting for it")
        else:
            resources = f"{props['cpus']:.0f} vCPU, {props['memory_mib']:.0f} MiB"
            say("vm", f"starting QEMU ({props['accelerator']}, {resources})")
            # The ready line must come from this boot, not from the last one's console.
            remove_quietly(paths.serial_log)
            shares.start_virtiofsd(paths, mount_list, props.get("virtiofsd"))
            try:
                pid = vm_process.launch(props["argv"], paths)
            except BaseException:
                shares.stop_virtiofsd(paths)
                raise
        try:
            seconds = vm_process.wait_until_ready(
                target,
                paths,
                timeout=props["boot_timeout_seconds"],
                log=lambda line: say("vm", line),
                ready_line=cloudinit.READY_LINE,
            )
            if mount_list:
                shares.mount_in_guest(target, mount_list)
                shares.start_reverse_sshfs(paths, target, mount_list, props.get("sftp_server"), host_os())
                say("vm", f"mounted {len(mount_list)} host folder(s): " + ", ".join(m.vm for m in mount_list))
        except BaseException:
            # Nothing half-made: a VM that never became ready is not left running.
            vm_process.stop(paths, powerdown_timeout=5)
            shares.stop_virtiofsd(paths)
            shares.stop_reverse_sshfs(paths)
            raise
        say("vm", f"ready after {seconds:.0f} s: {self.login_hint(target)}")
        return {**props, "pid": pid, "ready_seconds": round(seconds, 1)}
