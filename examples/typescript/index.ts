import * as pulumi from "@pulumi/pulumi";
import * as nexus from "@pulumi/nexus";

// Every setting has a default (the reference program's stack configuration); these are the
// ones this example lets you change with `pulumi config set <key> <value>`.
const config = new pulumi.Config();

const lab = new nexus.Lab("lab", {
    // Unset: the Ubuntu 24.04 cloud image for the VM's arch. A local path or file:// URL works offline.
    image: { url: config.get("imageUrl") },
    vm: {
        accelerator: config.get("accelerator", { allowedValues: Object.values(nexus.AcceleratorChoice) })
            ?? nexus.AcceleratorChoice.Auto,
        cpus: config.getNumber("cpus") ?? 2,
        memoryMib: config.getNumber("memoryMib") ?? 4096,
        diskSize: config.get("diskSize") ?? "20G",
    },
    // SSH only; forward 8080 -> 80 and 8443 -> 443 once the playground runs a web server.
    network: { sshPort: config.getNumber("sshPort") ?? 2222, forwards: [] },
    guest: {
        username: config.get("username") ?? "dev",
        // Docker, QEMU and libvirt in the VM for the playground; false for a bare VM.
        installPackages: config.getBoolean("installPackages") ?? true,
    },
    // The guest layers, opt-in: `pulumi config set playground true` starts the nexus-playground
    // container in the VM, and `pulumi config set innerVm true` a VM inside that container.
    playground: { enabled: config.getBoolean("playground") ?? false },
    innerVm: { enabled: config.getBoolean("innerVm") ?? false },
});

export const sshCommand = lab.sshCommand;
export const accelerator = lab.accelerator;
