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
import subprocess
import sys
import textwrap
import time
from pathlib import Path

SERVER = textwrap.dedent("""
    import importlib, json, os, sys, traceback
    for name in sys.argv[1:]:
        importlib.import_module(name)
    from jax._src import xla_bridge
    assert not xla_bridge._backends, "the fork server must not start JAX's backend"
    reply = sys.stdout
    for line in sys.stdin:
        job = json.loads(line)
        if "wait" in job:
            _, status = os.waitpid(job["wait"], 0)
            code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            print(json.dumps({"returncode": code}), file=reply, flush=True)
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
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if not isinstance(e.code, int) and e.code is not None:
                print(e.code, file=sys.stderr)
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

    def wait(self) -> int:
        """Its exit status (``-signal`` when a signal ended it)."""
        if self.returncode is None:
            self.returncode = self.server._ask({"wait": self.pid})["returncode"]
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

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)

    def __enter__(self) -> ForkServer:
        return self

    def __exit__(self, *exc) -> None:
        for child in self.children:  # a failed test leaves no child running
            if child.returncode is None:
                try:
                    child.kill(9)
                except ProcessLookupError:
                    pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
