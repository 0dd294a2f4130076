"""Team state: two people keep their stacks in one S3-compatible bucket (README, "Team state
in an S3-compatible bucket").

The bucket is served on loopback by moto's S3 server (tests/support/s3_bucket.py), a pip
package, so the test needs no container image or MinIO download. Alice and Bob each have their
own copy of the project and their own PULUMI_HOME; they share the bucket, the passphrase and
the stack's file (Pulumi.<stack>.yaml, with the passphrase's salt, as a teammate gets it from
the repository). One host-only lab boots under TCG:

    Alice ups -> Bob lists it and reads its outputs -> Alice's `up` waits at its prompt while
    Bob's `up` is refused by the lock, and Bob's own lab, a second stack in the bucket, comes
    up beside it -> Bob's preview shows no changes -> Bob destroys both
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from dataclasses import replace
from pathlib import Path

import pytest

from tests.e2e.test_lab import free_port, gone_within, lab_config, qemu_processes_of, ssh
from tests.e2e.test_lab import image_url as image_url  # a module fixture, shared
from tests.support.pulumi_cli import PulumiCli, project_view
from tests.support.s3_bucket import CREDENTIALS, Bucket, s3_bucket
from tests.support.terminal import Terminal

pytestmark = [pytest.mark.engine]

STACK = "team"
BOBS_STACK = "bob"
PROMPT = "Do you want to perform this update?"


def teammate(home: Path, bucket: Bucket) -> PulumiCli:
    """One person: their own project copy and PULUMI_HOME (in `home`), the team's bucket.
    Every PulumiCli uses the same passphrase, as a team shares one."""
    project = project_view(home / "project")
    return PulumiCli(
        project_dir=project,
        backend_dir=home,
        stack=STACK,
        config_file=project / f"Pulumi.{STACK}.yaml",
        extra_env=dict(CREDENTIALS),
        backend_url=bucket.backend_url(),
    )


def interactive_up(cli: PulumiCli) -> Terminal:
    """`pulumi up` typed in a terminal: it previews, then asks before changing anything."""
    env = {**cli.env(), "TERM": "xterm", "PULUMI_DISABLE_CI_DETECTION": "1"}  # a CI's variables
    return Terminal(["pulumi", "up", *cli.stack_args(), "--color", "never"], cli.project_dir, env)


def stack_locks(bucket: Bucket, stack: str = STACK) -> list[str]:
    return bucket.keys(f".pulumi/locks/organization/nexus-nested-vm/{stack}/")


@pytest.mark.vm
def test_two_people_share_a_lab_in_a_bucket_and_the_lock_refuses_a_second_up(
    tmp_path: Path, image_url: str
) -> None:
    state_dir = tmp_path / "state"
    bobs_state_dir = tmp_path / "bobs-state"
    with s3_bucket("nexus-labs") as bucket:
        alice = teammate(tmp_path / "alice", bucket)
        bob = teammate(tmp_path / "bob", bucket)
        bobs_lab = replace(bob, stack=BOBS_STACK, config_file=bob.project_dir / f"Pulumi.{BOBS_STACK}.yaml")
        alices_up: Terminal | None = None
        destroyed = None
        bobs_destroyed = None
        try:
            # 1. Alice makes the lab; the stack's file goes to the repository.
            ssh_port = free_port()
            alice.init(lab_config(tmp_path, image_url, ssh_port, free_port()))
            alice.up()
            outputs = alice.outputs()
            assert outputs["sshPort"] == ssh_port
            assert ssh(outputs, "whoami") == "nexus"
            pid = outputs["vmPid"]
            shutil.copyfile(alice.config_file, bob.config_file)

            # 2. Bob, on his own PULUMI_HOME, sees the stack and its outputs.
            listed = json.loads(bob.run("stack", "ls", "--json").stdout)
            assert [(s["name"], s["resourceCount"]) for s in listed] == [(STACK, len(alice.resources()))]
            assert bob.outputs() == outputs

            # 3. Alice's `up` holds the stack's lock while it waits at its prompt. Bob wants more
            # memory, which would restart the VM: his `up` is refused before it changes anything.
            alices_up = interactive_up(alice)
            alices_up.wait_for(PROMPT, 600)
            (lock,) = stack_locks(bucket)
            assert json.loads(bucket.read(lock))["pid"] == alices_up.process.pid
            bob.set_config("nexus:vm.memoryMiB", "1536")
            refused = bob.up(check=False)
            said = refused.stdout + refused.stderr
            assert refused.returncode != 0
            assert "the stack is currently locked by 1 lock(s)" in said, said
            assert f"s3://nexus-labs/{lock}?" in said and f"(pid {alices_up.process.pid})" in said, said
            assert bob.outputs()["vmPid"] == pid
            assert qemu_processes_of(state_dir) == [pid]

            # 4. The lock is the stack's, not the bucket's: Bob's own lab, a second stack in the
            # same bucket, comes up while Alice's `up` still holds hers.
            bobs_config = lab_config(
                tmp_path, image_url, free_port(), free_port(), paths={"stateDir": str(bobs_state_dir)}
            )
            bobs_lab.init(bobs_config)
            bobs_lab.up()
            bobs_outputs = bobs_lab.outputs()
            assert ssh(bobs_outputs, "whoami") == "nexus"
            assert qemu_processes_of(bobs_state_dir) == [bobs_outputs["vmPid"]]
            assert alices_up.process.poll() is None and stack_locks(bucket) == [lock]
            assert stack_locks(bucket, BOBS_STACK) == []
            listed = json.loads(alice.run("stack", "ls", "--json").stdout)
            assert sorted(s["name"] for s in listed) == sorted([STACK, BOBS_STACK])

            # Alice says no: her `up` ends without a change and lets go of the lock.
            alices_up.type("\r")  # Enter takes the prompt's default, "no"
            alices_up.finish(120)
            assert "confirmation declined, not proceeding with the update" in alices_up.output()
            assert stack_locks(bucket) == []
            assert ssh(outputs, "whoami") == "nexus" and alice.outputs()["vmPid"] == pid

            # 5. Bob drops his change (the repository's file again): nothing to do; then he
            # destroys the lab, and Alice sees it gone.
            shutil.copyfile(alice.config_file, bob.config_file)
            quiet = bob.preview("--expect-no-changes")
            assert "to update" not in quiet.stdout and "to replace" not in quiet.stdout, quiet.stdout
            destroyed = bob.destroy(check=False)
            assert destroyed.returncode == 0, destroyed.stdout + destroyed.stderr
            assert gone_within(pid, 10), "destroy left the VM running"
            assert qemu_processes_of(state_dir) == []
            assert not state_dir.exists()
            assert stack_locks(bucket) == []
            assert alice.resources() == []
            assert qemu_processes_of(bobs_state_dir) == [bobs_outputs["vmPid"]]  # his own lab stays
            bobs_destroyed = bobs_lab.destroy()
            assert gone_within(bobs_outputs["vmPid"], 10), "destroy left Bob's VM running"
            assert not bobs_state_dir.exists()
            assert stack_locks(bucket, BOBS_STACK) == []
        finally:
            if alices_up is not None:
                alices_up.close()
                if stack_locks(bucket):  # her up was killed half way: its lock stays
                    alice.run("cancel", "--stack", STACK, "--yes", check=False)
            if destroyed is None:
                alice.destroy(check=False)
            if bobs_destroyed is None and bobs_lab.config_file.exists():
                bobs_lab.destroy(check=False)
            for leftover in qemu_processes_of(state_dir) + qemu_processes_of(bobs_state_dir):
                os.kill(leftover, signal.SIGKILL)
