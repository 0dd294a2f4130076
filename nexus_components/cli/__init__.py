"""`scripts/lab`: commands on a stack's running lab that are not a `pulumi up`.

Each command is a module with `add_parser(subparsers)`, registered in `__main__.COMMANDS`.
Commands find the lab through the stack's outputs (`stack.LabOutputs`), so they act on
exactly what `up` made and work wherever the stack's state is.

`fleet` is `scripts/fleet`'s entry point of its own (`python -m nexus_components.cli.fleet`):
many stacks at once through Pulumi's Automation API.
"""
