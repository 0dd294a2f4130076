"""Entry point of `scripts/lab`: parses the command line and runs one command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from types import ModuleType

from nexus_components.cli import copy, snapshot, stack
from nexus_components.core.errors import NexusError

# Each module: add_parser(subparsers) registering a sub-command whose `run` default takes
# (args, LabOutputs) and returns an exit status.
COMMANDS: tuple[ModuleType, ...] = (copy, snapshot)

Runner = Callable[[argparse.Namespace, stack.LabOutputs], int]


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="scripts/lab", description="Commands on a stack's running lab.")
    top.add_argument("--stack", help="the stack whose lab to act on (default: the selected stack)")
    subparsers = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.add_parser(subparsers)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    run: Runner = args.run
    try:
        name = args.stack or stack.selected_stack()
        return run(args, stack.read_outputs(name))
    except NexusError as error:
        print(f"scripts/lab {args.command}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
