"""`deepvid run`'s distributed flags against hostile input: every malformed coordinator,
count or id is one clear line and exit code 2 before jax.distributed is touched (it would
segfault, raise an IndexError or wait silently), and an unreachable coordinator ends, within
the timeout given, with a message naming it."""

from __future__ import annotations

import re
import socket
import subprocess
import sys

import jax
import pytest
from conftest import cpu_env

from deepvid_jax import cli

RUN = ["run", "--dataset", "digits", "--split", "test[:4]", "--quiet"]
CASES = {
    # name: (flags, stderr regex)
    "port not a number": (["--coordinator", "localhost:abc", "--num-processes", "2",
                           "--process-id", "0"], "port must be an integer in 1..65535"),
    "port 0": (["--coordinator", "localhost:0", "--num-processes", "2", "--process-id", "0"],
               "port must be an integer in 1..65535, got '0'"),
    "port too large": (["--coordinator", "localhost:65536", "--num-processes", "1",
                        "--process-id", "0"], "port must be an integer in 1..65535"),
    "no port": (["--coordinator", "nonsense", "--num-processes", "2", "--process-id", "0"],
                "expected host:port"),
    "no host": (["--coordinator", ":1234", "--num-processes", "2", "--process-id", "0"],
                "expected host:port"),
    "IPv6 without brackets": (["--coordinator", "::1:1234", "--num-processes", "2",
                               "--process-id", "0"], "IPv6 in brackets"),
    "a space in the host": (["--coordinator", "my host:1234", "--num-processes", "2",
                             "--process-id", "0"], "expected host:port"),
    "no process id": (["--coordinator", "nonsense:1", "--num-processes", "2"],
                      "go together: --process-id missing"),
    "only a count": (["--num-processes", "2"],
                     "go together: --coordinator and --process-id missing"),
    "count 0": (["--coordinator", "localhost:1234", "--num-processes", "0", "--process-id", "0"],
                "--num-processes: must be >= 1"),
    "negative id": (["--coordinator", "localhost:1234", "--num-processes", "2",
                     "--process-id", "-1"], "--process-id: must be >= 0"),
    "id not below the count": (["--coordinator", "localhost:1234", "--num-processes", "2",
                                "--process-id", "2"], "--process-id 2 must be < --num-processes 2"),
    "timeout 0": (["--coordinator", "localhost:1234", "--num-processes", "2", "--process-id", "1",
                   "--coordinator-timeout", "0"], "--coordinator-timeout: must be > 0"),
    "timeout nan": (["--coordinator", "localhost:1234", "--num-processes", "2",
                     "--process-id", "1", "--coordinator-timeout", "nan"], "must be finite"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_distributed_flags_fail_before_jax_distributed(case, tmp_path, capsys, monkeypatch):
    def tripped(*args, **kwargs):
        raise AssertionError("jax.distributed.initialize was called")

    monkeypatch.setattr(jax.distributed, "initialize", tripped)
    flags, message = CASES[case]
    try:
        code = cli.main([*RUN, "--out", str(tmp_path / "s.zarr"), *flags])
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if "error" in line]) == 1, err
    assert re.search(message, err), err
    assert not (tmp_path / "s.zarr").exists()


def _closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_coordinator_is_named_within_the_timeout(tmp_path):
    address = f"127.0.0.1:{_closed_port()}"
    env = cpu_env()
    proc = subprocess.run(
        [sys.executable, "-m", "deepvid_jax.cli", *RUN, "--out", str(tmp_path / "s.zarr"),
         "--coordinator", address, "--num-processes", "2", "--process-id", "1",
         "--coordinator-timeout", "1"],
        capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"cannot reach the coordinator {address} within 1 s" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "Check failure" not in proc.stderr
    assert not (tmp_path / "s.zarr").exists()
