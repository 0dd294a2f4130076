"""The guest layers: Docker in the VM, the playground container, the optional inner VM."""
