"""The program process and the SIGINT the language host sends when the engine ends a run.

Real child processes stand in for the program: an event loop waiting on a blocking call in
a worker thread, as the SDK waits on RegisterResource, inside the same except clauses the
language host's runner has; and one where the signal lands while asyncio reports a task
destroyed during shutdown, the moment a failed `up` of the lab showed a traceback.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

from nexus_components.interrupt import EXIT_STATUS
from tests.support.pulumi_cli import REPO

PROGRAM = textwrap.dedent(
    """
    import asyncio, sys, threading
    from concurrent.futures import ThreadPoolExecutor

    if sys.argv[1] == "handled":
        from nexus_components.interrupt import leave_quietly_on_interrupt
        leave_quietly_on_interrupt()

    executor = ThreadPoolExecutor()
    loop = asyncio.new_event_loop()
    never = threading.Event()

    def wait():
        # Said from the worker, so the signal lands while the loop waits on it: said before
        # run_in_executor, it could land inside the executor's submit, whose half-started
        # worker then kept `executor.shutdown(wait=True)` waiting (seen once in CI).
        print("waiting", flush=True)
        never.wait()

    async def register():
        await loop.run_in_executor(executor, wait)

    try:
        loop.run_until_complete(register())
    except Exception as error:
        print("error: " + str(error), file=sys.stderr)
    finally:
        never.set()
        executor.shutdown(wait=True)
        loop.close()
    """
)


# The SDK's loop garbage-collects a pending task at shutdown: asyncio reports it through
# call_exception_handler from the task's __del__, and the signal arrives right then.
DURING_SHUTDOWN = textwrap.dedent(
    """
    import asyncio, gc, os, signal, sys, time

    if sys.argv[1] == "handled":
        from nexus_components.interrupt import leave_quietly_on_interrupt
        leave_quietly_on_interrupt()

    def report(loop, context):
        print("waiting", flush=True)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)

    loop = asyncio.new_event_loop()
    loop.set_exception_handler(report)
    task = loop.create_task(asyncio.sleep(3600))
    loop.run_until_complete(asyncio.sleep(0))
    del task
    loop = None
    gc.collect()
    print("survived", flush=True)
    """
)


def interrupted_program(mode: str, program: str = PROGRAM) -> subprocess.CompletedProcess[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", program, mode],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline() == "waiting\n"
    if program is PROGRAM:
        child.send_signal(signal.SIGINT)
    stdout, stderr = child.communicate(timeout=30)
    return subprocess.CompletedProcess(child.args, child.returncode, stdout, stderr)


def test_an_interrupted_program_leaves_without_a_traceback() -> None:
    result = interrupted_program("handled")
    assert result.returncode == EXIT_STATUS
    assert result.stderr == ""


def test_without_the_handler_python_prints_a_keyboardinterrupt_traceback() -> None:
    # What users saw before: the reason the handler exists.
    result = interrupted_program("default")
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "KeyboardInterrupt" in result.stderr


def test_a_signal_during_asyncio_shutdown_leaves_without_a_traceback() -> None:
    result = interrupted_program("handled", DURING_SHUTDOWN)
    assert result.returncode == EXIT_STATUS
    assert result.stderr == ""
    assert "survived" not in result.stdout
