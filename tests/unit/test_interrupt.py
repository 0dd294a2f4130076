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
    import asyncio, signal, sys, threading, time
    from concurrent.futures import ThreadPoolExecutor

    mode, target = sys.argv[1:3]
    if mode == "handled":
        from nexus_components.interrupt import leave_quietly_on_interrupt
        leave_quietly_on_interrupt()
    else:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored

    executor = ThreadPoolExecutor()
    loop = asyncio.new_event_loop()
    never = threading.Event()
    main = threading.get_ident()

    def wait():
        # Once the loop has run a callback of this worker's, the main thread is past
        # run_in_executor's submit and back waiting in the loop. (A KeyboardInterrupt
        # inside submit can leave a lock of the executor's held: the exit then hangs.)
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop).result()
        if target == "process":
            print("waiting", flush=True)  # the test sends SIGINT to the process
        else:
            if target == "main":
                # Only once it sleeps in the loop's epoll wait: a KeyboardInterrupt raised
                # while it still sets this worker's result would leave that lock held.
                # (Bounded: a kernel may not name the wait, which the race then risks.)
                wchan = f"/proc/self/task/{threading.main_thread().native_id}/wchan"
                deadline = time.monotonic() + 5
                while "epoll" not in open(wchan).read() and time.monotonic() < deadline:
                    time.sleep(0.01)
            print("signalling", flush=True)
            signal.pthread_kill(threading.get_ident() if target == "worker" else main, signal.SIGINT)
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


def interrupted_program(
    mode: str, program: str = PROGRAM, target: str = "process"
) -> subprocess.CompletedProcess[str]:
    """Run `program` and interrupt it: SIGINT from here to the process, or (target "worker"
    or "main") sent by the program's worker thread to that thread of its own."""
    child = subprocess.Popen(
        [sys.executable, "-c", program, mode, target],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    said = child.stdout.readline()
    if program is PROGRAM and target == "process":
        assert said == "waiting\n"
        child.send_signal(signal.SIGINT)
    stdout, stderr = child.communicate(timeout=30)
    return subprocess.CompletedProcess(child.args, child.returncode, said + stdout, stderr)


def test_an_interrupted_program_leaves_without_a_traceback() -> None:
    result = interrupted_program("handled")
    assert result.returncode == EXIT_STATUS
    assert result.stderr == ""


def test_a_signal_a_worker_thread_takes_still_ends_the_program() -> None:
    # The kernel hands a process's signal to any of its threads; one taken by a worker did
    # not wake the main thread waiting in the loop, and the program sat there.
    result = interrupted_program("handled", target="worker")
    assert result.stdout == "signalling\n"
    assert result.returncode == EXIT_STATUS
    assert result.stderr == ""


def test_without_the_handler_python_prints_a_keyboardinterrupt_traceback() -> None:
    # What users saw before: the reason the handler exists.
    result = interrupted_program("default", target="main")
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "KeyboardInterrupt" in result.stderr


def test_a_signal_during_asyncio_shutdown_leaves_without_a_traceback() -> None:
    result = interrupted_program("handled", DURING_SHUTDOWN)
    assert result.returncode == EXIT_STATUS
    assert result.stderr == ""
    assert "survived" not in result.stdout
