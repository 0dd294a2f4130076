"""The guest layers' resources (nexus:guest:*): Docker in the VM, the playground container's checks and
its image from a tarball, the inner VM and its cloud image, the helper scripts beside the stack."""
