"""What the Docker-engine layer asks the VM, and how it reads the answers.

The layer is ready when cloud-init has finished, `docker` is installed and the daemon
answers. Each probe is an argument list run by a `CommandRunner`; each parser turns the
answer into either "ready" (None) or a sentence saying what is still missing, which is
what the timeout error shows. The seed's "Inside the VM" checks (`docker --version`,
`kvm-ok`, `libvirtd --version`) become the layer's outputs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CLOUD_INIT_STATUS = ("cloud-init", "status")
CLOUD_INIT_LOG_TAIL = ("sudo", "-n", "tail", "-n", "25", "/var/log/cloud-init-output.log")
DOCKER_INSTALLED = ("sh", "-c", "command -v docker")
# As root, so the answer does not depend on the login user's groups yet.
DOCKER_SERVER_VERSION = ("sudo", "-n", "docker", "version", "--format", "{{.Server.Version}}")
DOCKER_DAEMON_STATE = ("systemctl", "is-active", "docker")
# What systemd says of a daemon that was stopped (`systemctl stop docker docker.socket`) or
# gave up; anything else ("activating", ...) is worth waiting for.
DAEMON_STOPPED_STATES = ("inactive", "failed")
# The daemon is the lab's own: `up` starts a stopped one (docker.service requires, and so
# starts, docker.socket).
START_DOCKER = ("sudo", "-n", "systemctl", "start", "docker")
DOCKER_JOURNAL_TAIL = ("sudo", "-n", "journalctl", "--unit", "docker", "--lines", "15", "--no-pager")
# The login user's own access, which pulumi-docker's ssh:// connection needs.
DOCKER_AS_USER = ("docker", "version", "--format", "{{.Server.Version}}")
# The guest kernel's boot id: the same one after QEMU changed means the VM was resumed from
# its saved memory (a suspension, a snapshot), not booted.
BOOT_ID = ("cat", "/proc/sys/kernel/random/boot_id")
# Both in one login, for a VM that should have resumed: `exec "$@"` runs DOCKER_AS_USER's words.
BOOT_ID_AND_DOCKER_AS_USER = (
    "sh",
    "-c",
    'cat /proc/sys/kernel/random/boot_id && exec "$@"',
    "sh",
    *DOCKER_AS_USER,
)
KVM_OK = ("sudo", "-n", "kvm-ok")
LIBVIRT_VERSION = ("sudo", "-n", "libvirtd", "--version")


def boot_id_and_version(stdout: str) -> tuple[str, str]:
    """BOOT_ID_AND_DOCKER_AS_USER's answer -> (boot id, Docker server version); "" for a part missing."""
    lines = [line.strip() for line in stdout.strip().splitlines()]
    return (lines[0] if lines else "", lines[1] if len(lines) > 1 else "")


def join_docker_group(username: str) -> tuple[str, ...]:
    """Lets the login user talk to the daemon from the next SSH session on."""
    return ("sudo", "-n", "usermod", "-aG", "docker", "--", username)


def cloud_init_state(output: str) -> str:
    """`status: running` -> "running"; unknown text -> "unknown"."""
    match = re.search(r"^status:\s*(\w+)", output, re.MULTILINE)
    return match.group(1) if match else "unknown"


def cloud_init_missing(returncode: int, output: str) -> str | None:
    """None once cloud-init is done; otherwise what is still missing."""
    state = cloud_init_state(output)
    if state in ("done", "disabled"):
        return None
    if state == "running" or state == "not":  # "status: not started" / "not run"
        return f"cloud-init is still running (status: {state})"
    if state == "error" or returncode == 1:
        return "cloud-init finished with an error"
    return f"cloud-init reports {output.strip() or 'nothing'} (exit status {returncode})"


def docker_missing(returncode: int, output: str) -> str | None:
    if returncode == 0 and output.strip():
        return None
    text = output.strip().splitlines()[-1] if output.strip() else f"exit status {returncode}"
    if "command not found" in output or "No such file" in output:
        return "docker is not installed in the VM"
    return f"the Docker daemon does not answer ({text})"


@dataclass(frozen=True)
class KvmVerdict:
    usable: bool
    verdict: str  # kvm-ok's own words, e.g. "KVM acceleration can be used"


def parse_kvm_ok(returncode: int, output: str) -> KvmVerdict:
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    if returncode == 127 or not lines:
        return KvmVerdict(False, "kvm-ok is not installed in the VM (package cpu-checker)")
    # kvm-ok ends with its verdict; the lines before say why ("INFO: /dev/kvm does not exist").
    verdict = "; ".join(lines[-3:]) if returncode != 0 else lines[-1]
    return KvmVerdict(returncode == 0, verdict)


def parse_libvirt_version(returncode: int, output: str) -> str:
    """`libvirtd (libvirt) 9.0.0` -> "9.0.0"; "not installed" when it is missing."""
    match = re.search(r"libvirt\)?\s+([0-9][0-9.]*)", output)
    if returncode == 0 and match:
        return match.group(1)
    return "not installed"


def docker_host(user: str, host: str, port: int) -> str:
    """The address pulumi-docker (and `docker -H`) reach the VM's daemon at."""
    return f"ssh://{user}@{host}:{port}"
