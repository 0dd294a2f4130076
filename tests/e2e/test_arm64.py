"""The arm64 path for real: an aarch64 guest under qemu-system-aarch64 with UEFI, through the program.

A small arm64 Debian cloud image is built locally (tests/support/arm64_image.py: GPT, an EFI
system partition with GRUB for arm64-efi), served over HTTP, and a throwaway stack boots it under
TCG on QEMU's virt machine. The UEFI firmware is not configured: the program finds the host's
(Debian's AAVMF here). The lifecycle:

    up -> ssh (aarch64, booted by UEFI) -> write a UEFI variable -> restart -> variable still there
       -> destroy leaves no process, no port, no file
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_lab import (
    free_port,
    gone_within,
    lab_config,
    lab_stack,
    port_is_free,
    qemu_processes_of,
    ssh,
)
from tests.support.arm64_image import IMAGE_NAME, ensure_arm64_test_image
from tests.support.file_server import serving
from tests.support.processes import running

pytestmark = [pytest.mark.engine, pytest.mark.vm]

# A vendor GUID of our own for the test variable; attributes 7 = non-volatile, boot and runtime access.
VARIABLE = f"NexusArm64Test-{uuid.uuid5(uuid.NAMESPACE_URL, 'nexus-nested-vm/arm64-e2e')}"
EFIVARS = "/sys/firmware/efi/efivars"


@pytest.fixture(scope="module")
def arm64_image_url() -> Iterator[str]:
    with serving(ensure_arm64_test_image(), IMAGE_NAME) as url:
        yield url


def arm64_config(tmp_path: Path, image_url: str, ssh_port: int, http_port: int) -> dict[str, Any]:
    # An emulated arm64 guest boots several times slower than an x86_64 one under TCG.
    # Measured here at a load of 10-14 on 2 cores: over 20 minutes with -cpu max.
    # The arm64 test image has no Docker either: this test is about the VM layer.
    return lab_config(
        tmp_path, image_url, ssh_port, http_port, vm={"arch": "aarch64", "bootTimeoutSeconds": 2700}
    )


def test_arm64_lifecycle_with_a_persistent_uefi_variable_store(tmp_path: Path, arm64_image_url: str) -> None:
    ssh_port, http_port = free_port(), free_port()
    cli = lab_stack(tmp_path, "arm64")
    cli.init(arm64_config(tmp_path, arm64_image_url, ssh_port, http_port))
    state_dir, cache_dir = tmp_path / "state", tmp_path / "cache"
    last_pid = 0
    try:
        started = time.monotonic()
        first = cli.up()
        assert "[vm] ready after" in first.stdout, first.stdout
        print(
            f"arm64 first up (download + UEFI boot to SSH + cloud-init): {time.monotonic() - started:.0f} s"
        )
        outputs = cli.outputs()
        print(f"arm64 vmReadySeconds: {outputs['vmReadySeconds']}")
        assert outputs["accelerator"] == "tcg"
        assert ssh(outputs, "uname -m") == "aarch64"
        assert ssh(outputs, "whoami") == "nexus"
        assert ssh(outputs, "cloud-init status").endswith("done")
        # Booted by UEFI: the kernel sees the firmware's runtime services.
        assert ssh(outputs, f"test -d {EFIVARS} && echo uefi") == "uefi"
        store = state_dir / "efi-vars.fd"
        assert store.stat().st_size == Path("/usr/share/AAVMF/AAVMF_VARS.fd").stat().st_size

        # A variable written by the guest lands in the VM's own variable store (efivarfs files
        # cannot seek: read them through a pipe; the first 4 bytes are the attributes).
        ssh(outputs, f"printf '\\007\\000\\000\\000kept-by-uefi' | sudo tee {EFIVARS}/{VARIABLE} >/dev/null")
        assert ssh(outputs, f"cat {EFIVARS}/{VARIABLE} | tail -c +5") == "kept-by-uefi"
        pid = outputs["vmPid"]

        # More memory restarts QEMU (a new process) on the same disk and variable store.
        cli.set_config("nexus:vm.memoryMiB", "1280")
        restart = cli.up()
        graceful = "VM powered off" in restart.stdout + restart.stderr
        print(f"arm64 restart: ACPI powerdown {'completed' if graceful else 'timed out, QEMU stopped'}")
        outputs = cli.outputs()
        assert outputs["vmPid"] != pid
        assert gone_within(pid, 10)
        assert ssh(outputs, f"cat {EFIVARS}/{VARIABLE} | tail -c +5") == "kept-by-uefi"
        last_pid = outputs["vmPid"]
        assert running(last_pid)
    finally:
        destroyed = cli.destroy(check=False)

    assert destroyed.returncode == 0, destroyed.stdout + destroyed.stderr
    assert last_pid and gone_within(last_pid, 10)
    assert qemu_processes_of(state_dir) == []
    assert port_is_free(ssh_port) and port_is_free(http_port)
    assert not state_dir.exists()
    assert cli.resources() == []
    cached = list(cache_dir.rglob(IMAGE_NAME))
    assert len(cached) == 1 and cached[0].stat().st_size > 0, "the shared image cache stays"
