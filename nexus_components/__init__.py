"""Pulumi components for the NEXUS nested-virtualization lab.

Pure modules (config, paths, qemu_argv, cloudinit, seed_iso, download) have no Pulumi
import and are unit-tested directly; `components` and `providers` wire them into Pulumi.
"""
