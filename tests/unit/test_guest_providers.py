"""The guest providers' decisions against a scripted VM (tests/support/fake_runner.py):
which commands they send, in which order, when they stop, and what their errors say."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from nexus_components.guest import providers
from nexus_components.guest.providers import INNER_VM_STALLED, INNER_VM_STALLED_HINT, InnerVmMachine
from nexus_components.guest.runner import GuestError
from nexus_components.guest.settings import InnerVmConfig
from tests.support.fake_runner import Answer, ScriptedRunner, hung_vm

REPO = Path(__file__).resolve().parents[2]
CONTAINER = "nexus-playground"


def one_line(text: str) -> str:
    return " ".join(text.split())


# --------------------------------------------------------------------------- inner VM stall


def kernel_boot(accelerator: str) -> InnerVmConfig:
    return InnerVmConfig(
        enabled=True, kernel="/opt/vmlinuz", accelerator=accelerator, boot_timeout_seconds=120
    )


def hangs_at(marker: str) -> ScriptedRunner:
    """Answers every command until one with `marker` among its words; from then on, nothing."""
    hung = False

    def answer(argv: tuple[str, ...]) -> Answer:
        nonlocal hung
        hung = hung or any(marker in word for word in argv)
        return hung_vm(argv) if hung else (0, "")

    return ScriptedRunner(answer)


@pytest.mark.parametrize(
    ("accelerator", "marker"),
    [("tcg", "UNIX-CONNECT:"), ("auto", "isa-debug-exit,iobase=0xf4,iosize=0x04")],
    ids=["during the QMP wait", "during the KVM probe"],
)
def test_a_vm_that_hangs_while_the_inner_vm_boots_gives_the_readmes_error_at_once(
    accelerator: str, marker: str
) -> None:
    machine = InnerVmMachine(hangs_at(marker), CONTAINER, kernel_boot(accelerator))
    started = time.monotonic()
    with pytest.raises(GuestError) as caught:
        machine.start()
    # Not after bootTimeoutSeconds (120 s), and not taken for "no KVM here".
    assert time.monotonic() - started < 30
    message = str(caught.value)
    assert message.startswith(INNER_VM_STALLED + ": the VM does not answer over SSH"), message
    assert "next step: " + INNER_VM_STALLED_HINT in message


def test_the_readme_says_what_the_stall_error_says() -> None:
    readme = one_line((REPO / "README.md").read_text())
    assert f"**`{INNER_VM_STALLED}`**" in readme
    assert INNER_VM_STALLED_HINT in readme
    assert providers.INNER_LAYER == "inner VM"
