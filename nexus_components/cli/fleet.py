"""`scripts/fleet`: up, preview or destroy every lab of a fleet description, a few at a time.

Usage: scripts/fleet {up,preview,destroy} DESCRIPTION [--parallel N] [--memory MIB] [--lab NAME ...]

The description, the settings each stack gets and the summary are pure modules
(nexus_components.fleet_description, fleet_report, fleet_memory). This is the thin part that
runs each lab's stack through Pulumi's Automation API, as many at once as `--parallel` and,
for `up`, the memory of the machines they run on allow. The API drives the `pulumi` CLI on PATH in the
project's folder: scripts/fleet puts the project's pinned CLI there, with the backend and
passphrase scripts/pulumi uses. One lab's failure is reported and the others go on.

Ctrl-C: labs that have not started do not start, and each running update gets one SIGINT,
which is Pulumi's own cancellation (no new steps; the nexus plugin finishes the one under
way, and it is recorded). A second Ctrl-C is passed on too, and Pulumi then stops at once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import IO, Any

import pulumi.automation as auto
from pulumi.automation.errors import create_command_error

from nexus_components.core.errors import NexusError
from nexus_components.fleet_description import (
    FleetDescriptionError,
    Lab,
    check_parallel,
    config_changes,
    load_description,
    select_labs,
    set_all_json,
)
from nexus_components.fleet_memory import (
    LOCAL,
    MACHINE_RESERVE_MIB,
    LabMemory,
    MemoryGate,
    budget_from_available,
    lab_memory,
)
from nexus_components.fleet_report import (
    DESTROYED,
    FAILED,
    INTERRUPTED,
    NOT_STARTED,
    PREVIEWED,
    READY,
    Outcome,
    describe_changes,
    exit_status,
    render_table,
    tally,
)
from nexus_components.host import remote
from nexus_components.host.hostfacts import available_memory_mib
from nexus_components.state_upgrade import drop_pending_creates

PROG = "scripts/fleet"
OPERATIONS = ("up", "preview", "destroy")
DEFAULT_PARALLEL = 2
# The checkout this module is in: its Pulumi project, unless the description names another.
CHECKOUT = Path(__file__).resolve().parents[2]
# The SDK warns when a `pulumi` it runs dies mid-stream; that lab's failure says it already.
warnings.filterwarnings("ignore", message="Error in event stream", category=UserWarning)


class FleetInterrupted(NexusError):
    """Ctrl-C came before this lab's next Pulumi command started."""


# --------------------------------------------------------------------------- output


class Printer:
    """Progress lines, `<seconds since start>  <lab>  <message>`, whole lines from any thread."""

    def __init__(self, names: Sequence[str], stream: IO[str] = sys.stdout) -> None:
        self._width = max((len(name) for name in names), default=0)
        self._stream = stream
        self._started = time.monotonic()
        # Reentrant: the Ctrl-C handler prints in the main thread, which may hold it already.
        self._lock = threading.RLock()

    def say(self, lab: str, message: str) -> None:
        first, *rest = message.rstrip().splitlines() or [""]
        prefix = f"{time.monotonic() - self._started:5.0f}s  {lab.ljust(self._width)}  "
        lines = [prefix + first] + [" " * len(prefix) + line for line in rest]
        self.line("\n".join(lines))

    def line(self, text: str = "") -> None:
        with self._lock:
            print(text, file=self._stream, flush=True)


# --------------------------------------------------------------------------- the Pulumi CLI


class InterruptiblePulumi(auto.PulumiCommand):
    """The Automation API's runner of the `pulumi` CLI, which can stop what it runs.

    Each command runs in a process group of its own, so Ctrl-C in the terminal reaches the
    fleet alone and not every `pulumi` at once (or twice, which makes Pulumi stop without
    finishing its steps); `interrupt` then hands each running command one SIGINT. Otherwise
    as the SDK's own `run`: the same arguments, environment and errors."""

    def __init__(self) -> None:
        try:
            super().__init__()
        except (OSError, subprocess.CalledProcessError) as error:
            raise NexusError(
                f"could not run the Pulumi CLI (`pulumi version`): {error}",
                hint="run scripts/fleet, which puts the project's Pulumi on PATH (after scripts/setup)",
            ) from error
        self._lock = threading.RLock()
        self._running: set[subprocess.Popen[str]] = set()
        self.interrupts = 0

    def interrupt(self) -> None:
        with self._lock:
            self.interrupts += 1
            for process in self._running:
                _send_interrupt(process)

    def run(
        self,
        args: list[str],
        cwd: str,
        additional_env: Mapping[str, str],
        on_output: auto.OnOutput | None = None,
        on_error: auto.OnOutput | None = None,
    ) -> auto.CommandResult:
        argv = [self.command, "--non-interactive", *args]
        env = {**os.environ, **additional_env, "PULUMI_AUTOMATION_API": "true"}
        with self._lock:
            if self.interrupts:
                raise FleetInterrupted(f"interrupted before `pulumi {args[0]}`", hint="run the fleet again")
            process = subprocess.Popen(
                argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=cwd,
                env=env,
                encoding="utf-8",
                start_new_session=_NEW_SESSION,
                creationflags=_CREATION_FLAGS,
            )
            self._running.add(process)
        try:
            stdout, stderr = _read_lines(process, on_output, on_error)
            process.wait()
        finally:
            with self._lock:
                self._running.discard(process)
        result = auto.CommandResult(
            stdout="\n".join(stdout), stderr="\n".join(stderr), code=process.returncode
        )
        if process.returncode != 0:
            raise create_command_error(result)
        return result


if sys.platform == "win32":
    _NEW_SESSION = False
    _CREATION_FLAGS = subprocess.CREATE_NEW_PROCESS_GROUP

    def _send_interrupt(process: subprocess.Popen[str]) -> None:
        process.send_signal(signal.CTRL_BREAK_EVENT)  # what Go reads as an interrupt there

else:
    _NEW_SESSION = True
    _CREATION_FLAGS = 0

    def _send_interrupt(process: subprocess.Popen[str]) -> None:
        process.send_signal(signal.SIGINT)


def _read_lines(
    process: subprocess.Popen[str], on_output: auto.OnOutput | None, on_error: auto.OnOutput | None
) -> tuple[list[str], list[str]]:
    def consume(stream: IO[str] | None, callback: auto.OnOutput | None, lines: list[str]) -> None:
        assert stream is not None
        for line in stream:
            line = line.rstrip()
            if callback:
                callback(line)
            lines.append(line)
        stream.close()

    stdout: list[str] = []
    stderr: list[str] = []
    readers = [
        threading.Thread(target=consume, args=(process.stdout, on_output, stdout), daemon=True),
        threading.Thread(target=consume, args=(process.stderr, on_error, stderr), daemon=True),
    ]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join()
    return stdout, stderr


class FleetWorkspace(auto.LocalWorkspace):
    """The project's workspace, whose stacks are named on each command (`--stack`) and never
    selected: the user's selected stack stays as it was, and labs running side by side do not
    race to select theirs."""

    def select_stack(self, stack_name: str) -> None:
        # `pulumi stack --stack NAME` fails with "no stack named" like `stack select` would.
        self._run_pulumi_cmd_sync(["stack", "--stack", stack_name])

    def create_stack(self, stack_name: str) -> None:
        self._run_pulumi_cmd_sync(["stack", "init", stack_name, "--no-select"])

    def export_state(self, stack_name: str) -> dict[str, Any]:
        # As stored, secrets encrypted (the SDK's export_stack shows them): none reaches a file.
        exported = self._run_pulumi_cmd_sync(["stack", "export", "--stack", stack_name])
        return dict(json.loads(exported.stdout))

    def import_state(self, stack_name: str, state: Mapping[str, Any]) -> None:
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / "state.json"
            path.write_text(json.dumps(state), encoding="utf-8")
            self._run_pulumi_cmd_sync(["stack", "import", "--stack", stack_name, "--file", str(path)])


# --------------------------------------------------------------------------- one lab


class LabRun:
    """One lab's operation: its progress lines from the engine's events, its outcome."""

    def __init__(
        self,
        lab: Lab,
        operation: str,
        workspace: FleetWorkspace,
        command: InterruptiblePulumi,
        printer: Printer,
    ) -> None:
        self.lab = lab
        self.operation = operation
        self.workspace = workspace
        self.command = command
        self.printer = printer
        self.errors: list[str] = []
        self.steps: Counter[str] = Counter()

    def say(self, message: str) -> None:
        self.printer.say(self.lab.name, message)

    def on_event(self, event: auto.EngineEvent) -> None:
        diagnostic = event.diagnostic_event
        if diagnostic is not None and not diagnostic.ephemeral:
            message = diagnostic.message.strip()
            if diagnostic.severity == "error":
                self.errors.append(message)
            elif message and diagnostic.severity in ("info", "info#err", "warning"):
                # The nexus plugin's long steps arrive here: `[vm] starting QEMU (...)`.
                self.say(("warning: " if diagnostic.severity == "warning" else "") + message)
        done = event.res_outputs_event
        # Counted as Pulumi's summary counts them: default providers are not.
        if done is not None and not done.metadata.type.startswith("pulumi:providers:"):
            self.steps[_op_name(done.metadata.op)] += 1

    def run(self) -> Outcome:
        started = time.monotonic()
        self.say(f"started: {self.operation} of stack {self.lab.stack}")
        try:
            result, changes = self._operate()
        except FleetInterrupted:
            return self._end(
                INTERRUPTED, "nothing changed", started, "stopped by Ctrl-C before its update began"
            )
        except auto.CommandError as error:
            return self._failed(error, started)
        except NexusError as error:
            return self._end(FAILED, "", started, str(error))
        except Exception as error:  # one lab's surprise must not stop the others
            return self._end(FAILED, "", started, f"unexpected error: {error!r}")
        return self._end(result, changes, started)

    def _operate(self) -> tuple[str, str]:
        if self.operation == "destroy":
            try:
                stack = auto.Stack.select(self.lab.stack, self.workspace)
            except auto.StackNotFoundError:
                return DESTROYED, "no such stack"
            destroyed = stack.destroy(on_event=self.on_event, color="never")
            return DESTROYED, describe_changes(_counts(destroyed.summary.resource_changes))
        stack = auto.Stack.create_or_select(self.lab.stack, self.workspace)
        self._write_settings(stack)
        if self.operation == "preview":
            previewed = stack.preview(on_event=self.on_event, color="never")
            return PREVIEWED, describe_changes(_counts(previewed.change_summary), planned=True)
        self._clear_pending_creates(stack)
        done = stack.up(on_event=self.on_event, color="never")
        return READY, describe_changes(_counts(done.summary.resource_changes))

    def _clear_pending_creates(self, stack: auto.Stack) -> None:
        """What scripts/up does after an `up` ended at once (Ctrl-C twice): its unfinished creates
        are dropped from the state, and this `up` does them again, taking over what they left."""
        exported = self.workspace.export_state(stack.name)
        deployment, cleared = drop_pending_creates(exported.get("deployment") or {})
        if cleared:
            self.say(
                f"the last up was interrupted; clearing its {cleared} unfinished create(s), "
                "which this up does again"
            )
            self.workspace.import_state(stack.name, {**exported, "deployment": deployment})

    def _write_settings(self, stack: auto.Stack) -> None:
        """The stack's `nexus:` keys made the lab's, written only where they differ."""
        current = {key: value.value for key, value in stack.get_all_config().items()}
        changes = config_changes(current, self.lab.config)
        if changes.to_remove:
            self.workspace.remove_all_config(stack.name, list(changes.to_remove))
        if changes.to_set:
            self.workspace.set_all_config_json(stack.name, set_all_json(changes.to_set))
        if changes:
            what = [f"set {', '.join(changes.to_set)}"] if changes.to_set else []
            what += [f"removed {', '.join(changes.to_remove)}"] if changes.to_remove else []
            self.say(f"stack settings: {'; '.join(what)}")

    def _failed(self, error: auto.CommandError, started: float) -> Outcome:
        if self.command.interrupts:
            done = describe_changes(self.steps)
            return self._end(
                INTERRUPTED,
                f"{done} before it stopped" if done != "no changes" else "nothing changed",
                started,
                "Pulumi cancelled the update after the steps under way; run the fleet again to finish it",
            )
        # The engine's own error diagnostics say it best; the command's output if it had none.
        message = "\n".join(self.errors) or _command_output(error)
        return self._end(FAILED, "", started, message)

    def _end(self, result: str, changes: str, started: float, error: str = "") -> Outcome:
        seconds = time.monotonic() - started
        if error:
            self.say(f"{result} after {seconds:.0f} s: {error}")
        else:
            self.say(f"{result} after {seconds:.0f} s ({changes})")
        return Outcome(self.lab.name, self.lab.stack, result, changes, seconds, error)


def _op_name(op: Any) -> str:
    # The SDK's OpType is a str Enum whose hash is not its value's: key counts by the value.
    return str(getattr(op, "value", op))


def _counts(counts: Mapping[Any, int] | None) -> dict[str, int]:
    return {_op_name(op): count for op, count in (counts or {}).items()}


def _command_output(error: auto.CommandError) -> str:
    """The failed command's exit code and output (its stderr last), cut to what explains it."""
    lines = str(error).strip().splitlines()
    return "\n".join(lines if len(lines) <= 40 else [*lines[:3], "...", *lines[-30:]])


# --------------------------------------------------------------------------- the fleet


def run_fleet(
    operation: str,
    labs: Sequence[Lab],
    *,
    parallel: int,
    project: Path,
    printer: Printer,
    memory_mib: int | None = None,
) -> tuple[list[Outcome], bool]:
    """Every lab's outcome, in the description's order, and whether Ctrl-C stopped the run."""
    command = InterruptiblePulumi()
    workspace = FleetWorkspace(work_dir=str(project), pulumi_command=command)
    needs = [lab_memory(lab.config) for lab in labs]
    # Only `up` boots VMs: a preview or a destroy is bounded by --parallel alone.
    budgets = machine_budgets(labs, needs, memory_mib, project, printer) if operation == "up" else {}
    gate = MemoryGate(parallel, budgets)

    def not_started(lab: Lab) -> Outcome:
        return Outcome(lab.name, lab.stack, NOT_STARTED, "nothing changed")

    def run_one(place: int, lab: Lab) -> Outcome:
        if command.interrupts:
            return not_started(lab)
        admitted, warning = gate.enter(place, needs[place], lambda message: printer.say(lab.name, message))
        if not admitted:
            return not_started(lab)
        try:
            if warning:
                printer.say(lab.name, warning)
            return LabRun(lab, operation, workspace, command, printer).run()
        finally:
            gate.leave(needs[place])

    with (
        _interrupts_to(command, gate, printer),
        ThreadPoolExecutor(max(len(labs), 1), thread_name_prefix="lab") as pool,
    ):
        futures = [pool.submit(run_one, place, lab) for place, lab in enumerate(labs)]
        outcomes = [future.result() for future in futures]
    return outcomes, bool(command.interrupts)


def machine_budgets(
    labs: Sequence[Lab], needs: Sequence[LabMemory], memory_mib: int | None, project: Path, printer: Printer
) -> dict[str, int | None]:
    """The MiB the fleet's labs may take at once on each machine they run on: `--memory`, else
    what the machine has available now, less what it keeps for itself."""
    budgets: dict[str, int | None] = {}
    said: list[str] = []
    for lab, need in zip(labs, needs, strict=True):
        if need.machine in budgets:
            continue
        if memory_mib is not None:
            budgets[need.machine] = memory_mib
            said.append(f"{need.machine}: {memory_mib} MiB (--memory)")
            continue
        try:
            available = _available_mib(need.machine, lab.config.get("nexus:host"), project)
        except NexusError as error:  # that lab's own run will say it, in the program's words
            available = None
            why = str(error).splitlines()[0]
        else:
            why = "its system does not say"
        budgets[need.machine] = budget_from_available(available)
        said.append(
            f"{need.machine}: {budgets[need.machine]} MiB ({available} MiB available, less "
            f"{MACHINE_RESERVE_MIB} kept for the machine)"
            if available is not None
            else f"{need.machine}: not measured ({why}), so --parallel alone bounds the labs there"
        )
    printer.line("memory the labs may take at once: " + "; ".join(said))
    return budgets


def _available_mib(machine: str, host_setting: Any, project: Path) -> int | None:
    if machine == LOCAL:
        return available_memory_mib()
    server = remote.load_host(host_setting, home=Path.home(), base_dir=project)
    assert server is not None  # a machine other than `local` comes from an ssh setting
    answer = remote.call(server, remote.HOST, "memory", {}, timeout=120)
    return None if answer["available_mib"] is None else int(answer["available_mib"])


@contextlib.contextmanager
def _interrupts_to(command: InterruptiblePulumi, gate: MemoryGate, printer: Printer) -> Iterator[None]:
    """While the fleet runs, Ctrl-C (or SIGTERM) goes to `command.interrupt` instead of raising,
    and the labs waiting at the gate do not start."""

    def handle(signum: int, frame: FrameType | None) -> None:
        if not command.interrupts:
            printer.line(
                "Ctrl-C: labs not started yet will not start; each running update is cancelled the "
                "way Pulumi cancels one (no new steps; the nexus plugin finishes the one under way). "
                "Ctrl-C again stops them at once."
            )
        else:
            printer.line("Ctrl-C again: Pulumi stops the running updates at once, mid-step")
        gate.cancel()
        command.interrupt()

    # SIGTERM too: the updates run in their own process groups and would outlive the fleet.
    signals = [signal.SIGINT] + ([signal.SIGTERM] if sys.platform != "win32" else [])
    previous = {number: signal.signal(number, handle) for number in signals}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


# --------------------------------------------------------------------------- command line


def _parallel(text: str) -> int:
    try:
        value: Any = int(text)
    except ValueError:
        value = text
    try:
        return check_parallel(value)
    except FleetDescriptionError as error:
        raise argparse.ArgumentTypeError(error.what.removeprefix("--parallel: ")) from None


def _memory(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"got {text!r}; allowed: a whole number of MiB, 1 or more")
    return int(text)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog=PROG,
        description="Bring up, preview or destroy every lab of a fleet description, a few at a time.",
    )
    top.add_argument("operation", choices=OPERATIONS, help="what to do with each lab's stack")
    top.add_argument("description", type=Path, help="the fleet's YAML file (see the README's scripts/fleet)")
    top.add_argument(
        "--parallel",
        type=_parallel,
        help=f"how many labs at once (default: the description's `parallel`, else {DEFAULT_PARALLEL})",
    )
    top.add_argument(
        "--memory",
        type=_memory,
        metavar="MIB",
        help="for up: the memory the labs may take at once on each machine, in MiB (default: what "
        f"each machine has available when the fleet starts, less {MACHINE_RESERVE_MIB} MiB)",
    )
    top.add_argument(
        "--lab", action="append", default=[], metavar="NAME", help="only this lab (repeat for more)"
    )
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        fleet = load_description(args.description)
        labs = select_labs(fleet, args.lab)
        parallel = args.parallel or fleet.parallel or DEFAULT_PARALLEL
        project = fleet.project or CHECKOUT
        backend = os.environ.get("PULUMI_BACKEND_URL") or "the project's (Pulumi.yaml, or pulumi login)"
        printer = Printer([lab.name for lab in labs])
        printer.line(
            f"fleet {args.operation}: {len(labs)} lab(s) from {fleet.source}, "
            f"{min(parallel, len(labs))} at a time; project {project}; backend {backend}"
        )
        outcomes, interrupted = run_fleet(
            args.operation, labs, parallel=parallel, project=project, printer=printer, memory_mib=args.memory
        )
    except NexusError as error:
        print(f"{PROG} {args.operation}: {error}", file=sys.stderr)
        return 2
    printer.line()
    printer.line(render_table(outcomes))
    printer.line()
    status = exit_status(outcomes, interrupted=interrupted)
    if interrupted:
        printer.line(
            f"fleet {args.operation}: interrupted ({tally(outcomes)}); each lab is as the table says. "
            f"`{PROG} {args.operation} {args.description}` again goes on from there."
        )
    else:
        quiet = all(outcome.changes == "no changes" for outcome in outcomes)
        printer.line(f"fleet {args.operation}: {tally(outcomes)}" + ("; nothing changed" if quiet else ""))
        if status:
            printer.line(
                f"next step: fix what each failed lab's error says (its nexus: settings are in "
                f"{args.description}), then run `{PROG} {args.operation} {args.description}` again"
            )
    return status


if __name__ == "__main__":
    sys.exit(main())
