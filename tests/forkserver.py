"""A fork server for tests that start many short Python children.

Importing jax and the library costs a child about 2.5 s of CPU before it does anything; a test
that kills a dozen children at chosen points pays that a dozen times. `ForkServer` starts one
Python process that imports the modules once (without starting JAX's backend, so that no
thread exists when it forks) and forks a child per `ForkServer.start`. Each child runs a
script as ``__main__`` with its own ``sys.argv``, its stdout and stderr in a file, and is a
real process: a test may SIGKILL it by pid, and `Child.wait` gives its exit status the way
`subprocess` gives one (``-signal`` when a signal ended it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

SERVER = textwrap.dedent("""
    import importlib, json, os, signal, sys, time, traceback
    for name in sys.argv[1:]:
        importlib.import_module(name)
    from jax._src import xla_bridge
    assert not xla_bridge._backends, "the fork server must not start JAX's backend"
    reply = sys.stdout
    for line in sys.stdin:
        job = json.loads(line)
        if "wait" in job:  # a child still running at the deadline is killed and reported
            pid, end, timed_out = job["wait"], time.monotonic() + job["timeout"], False
            done, status = os.waitpid(pid, os.WNOHANG)
            while not done:
                if time.monotonic() > end:
                    os.kill(pid, signal.SIGKILL)
                    timed_out = True
                    done, status = os.waitpid(pid, 0)
                else:
                    time.sleep(0.01)
                    done, status = os.waitpid(pid, os.WNOHANG)
            code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            print(json.dumps({"returncode": code, "timed_out": timed_out}), file=reply,
                  flush=True)
            continue
        sys.stdout.flush(); sys.stderr.flush()
        pid = os.fork()
        if pid:
            print(json.dumps({"pid": pid}), file=reply, flush=True)
            continue
        code = 0
        try:
            fd = os.open(job["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)
            os.close(0)
            sys.argv = ["-c", *job["argv"]]
            exec(compile(job["script"], "<forked>", "exec"), {"__name__": "__main__"})
        except SystemExit as e:  # as Python's own exit: None is 0, a message is printed, 1
            if e.code is None or isinstance(e.code, int):
                code = e.code or 0
            else:
                print(e.code, file=sys.stderr)
                code = 1
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os._exit(code)
""")


class Child:
    """A forked child: its pid, its output file, its exit status once `wait` returned."""

    def __init__(self, server: ForkServer, pid: int, out: Path):
        self.server, self.pid, self.out = server, pid, out
        self.returncode: int | None = None

    def output(self) -> str:
        """Its stdout and stderr so far."""
        return self.out.read_text() if self.out.exists() else ""

    def wait_for(self, text: str, timeout: float = 120) -> None:
        """Block until ``text`` appears in its output."""
        end = time.monotonic() + timeout
        while text not in self.output():
            if time.monotonic() > end:
                raise TimeoutError(f"{text!r} not in the child's output: {self.output()[-2000:]}")
            time.sleep(0.005)

    def kill(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait(self, timeout: float = 300) -> int:
        """Its exit status (``-signal`` when a signal ended it); a child still running after
        ``timeout`` seconds is killed and `TimeoutError` raised."""
        if self.returncode is None:
            reply = self.server._ask({"wait": self.pid, "timeout": timeout})
            self.returncode = reply["returncode"]
            if reply["timed_out"]:
                raise TimeoutError(f"the child ran over {timeout} s: {self.output()[-2000:]}")
        return self.returncode


class ForkServer:
    """One Python process with ``preload`` imported that forks a child per `start`."""

    def __init__(self, preload: list[str], env: dict | None = None):
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER, *preload],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=env)
        self.children: list[Child] = []

    def _ask(self, job: dict) -> dict:
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the fork server ended (exit status {self.proc.wait()}).")
        return json.loads(line)

    def start(self, script: str, argv: list[str], out: Path) -> Child:
        """Fork a child running ``script`` with ``sys.argv[1:] = argv``; output into ``out``."""
        child = Child(self, self._ask({"script": script, "argv": [str(a) for a in argv],
                                       "out": str(out)})["pid"], Path(out))
        self.children.append(child)
        return child

    def __enter__(self) -> ForkServer:
        return self

    def __exit__(self, *exc) -> None:
        for child in self.children:  # a failed test leaves no child running
            if child.returncode is None:
                try:
                    child.kill(signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
