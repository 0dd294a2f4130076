"""The host layer's resources: the VM's files on this machine and its QEMU process."""
