"""The warm worker (ketchup.worker): a job run through it behaves as the same job in its own process.

Each test starts a real server in a subprocess (with nothing preloaded, to stay fast; the pipeline
tests run every job of the tiny config through one with the full preload) and real clients
``python -m ketchup ...`` that find it through KETCHUP_WORKER.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from ketchup import worker

from conftest import SRC

# The server's jobs are ketchup's command lines; two more, added here only: "sleep" lets a test kill
# a running job, "where" writes the job's directory and one variable of its environment.
SERVER = """
import os, sys, time
from ketchup import worker
real = worker.main_of
def main_of(module):
    if module == "where":
        def where(argv):
            open(argv[0], "w").write(os.getcwd() + "|" + os.environ.get(argv[1], "-"))
            return 3
        return where
    if module == "locks":
        def locks(argv):
            fds = [int(fd) for fd in os.environ.get("KETCHUP_DEVICE_FDS", "").split(",") if fd]
            open(argv[0], "w").write(",".join(os.readlink(f"/proc/self/fd/{fd}") for fd in fds))
            return 0
        return locks
    if module == "sleep":
        def sleep(argv):
            open(argv[0], "w").write("started")
            time.sleep(60)
            return 0
        return sleep
    return real(module)
worker.main_of = main_of
worker.serve(sys.argv[1], preload=(), parent=int(sys.argv[2]))
"""


def _env(**extra: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(SRC), **extra)


@pytest.fixture
def server(tmp_path):
    address = f"ketchup-test-{uuid.uuid4().hex[:10]}"
    proc = subprocess.Popen([sys.executable, "-c", SERVER, address, str(os.getpid())], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    for _ in range(100):  # bound as soon as it starts
        if _bound(address):
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail(f"server did not start: {proc.communicate()[0].decode()}")
    yield address
    worker.stop(address)
    assert proc.wait(timeout=10) == 0


def _bound(address: str) -> bool:
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect("\0" + address)
        except OSError:
            return False
    return True


def _ketchup(args: list[str], cwd: Path, address: str | None, **env: str) -> subprocess.CompletedProcess:
    extra = {"KETCHUP_WORKER": address} if address else {}
    return subprocess.run([sys.executable, "-m", "ketchup", *args], cwd=cwd, env=_env(**extra, **env),
                          capture_output=True, text=True, timeout=120)


def _data_args(out: str) -> list[str]:
    spec = {"source": "synthetic", "n_train": 20, "n_dev": 5, "n_test": 5}
    return ["data", "--task", "en_nl", "--spec", json.dumps(spec), "--seed", "3", "--out", out]


def test_a_job_in_the_worker_writes_what_its_own_process_writes(server, tmp_path):
    (tmp_path / "w").mkdir()
    (tmp_path / "p").mkdir()
    # A relative --out: the child runs in the job's working directory, not the server's.
    via = _ketchup(_data_args("out"), tmp_path / "w", server)
    alone = _ketchup(_data_args("out"), tmp_path / "p", None)
    assert via.returncode == alone.returncode == 0, via.stderr + alone.stderr
    for split in ("train", "dev", "test"):
        assert (tmp_path / "w/out" / f"{split}.jsonl").read_bytes() == (tmp_path / "p/out" / f"{split}.jsonl").read_bytes()
    # The job's stderr is the client's (a rule's `> {log} 2>&1`), with the child's own resource use.
    assert "ketchup.worker: job used" in via.stderr
    assert "ketchup.worker" not in alone.stderr


def test_exit_status_and_error_lines_come_back(server, tmp_path):
    bad = _ketchup(["data", "--task", "en_nl", "--spec", '{"source": "nowhere"}', "--out", "o"], tmp_path, server)
    alone = _ketchup(["data", "--task", "en_nl", "--spec", '{"source": "nowhere"}', "--out", "o"], tmp_path, None)
    assert bad.returncode == alone.returncode != 0
    assert alone.stderr.strip().splitlines()[-1] in bad.stderr
    usage = _ketchup(["student", "--spec", "{}"], tmp_path, server)  # argparse exits with 2
    assert usage.returncode == 2 and "required" in usage.stderr


def test_the_job_gets_the_clients_directory_and_environment(server, tmp_path):
    out = tmp_path / "where.txt"
    script = f"import sys; from ketchup.worker import delegate; sys.exit(delegate({server!r}, 'where', [{str(out)!r}, 'KETCHUP_PROBE']))"
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=_env(KETCHUP_PROBE="from-the-job"), timeout=60)
    assert done.returncode == 3
    assert out.read_text() == f"{tmp_path}|from-the-job"


def test_the_job_holds_the_clients_device_locks(server, tmp_path):
    """A job's devices (ketchup.devices) are held by the forked child too, under its own descriptors,
    so they stay taken until the job itself ends."""
    out = tmp_path / "locks.txt"
    script = ("import os, sys; from ketchup import devices; from ketchup.worker import delegate; "
              "ids, fds = devices.take(2, ['d0', 'd1']); os.environ[devices.FDS_ENV] = ','.join(map(str, fds)); "
              f"sys.exit(delegate({server!r}, 'locks', [{str(out)!r}]))")
    done = subprocess.run([sys.executable, "-c", script], env=_env(KETCHUP_DEVICE_LOCKS=str(tmp_path / "locks")),
                          timeout=60)
    assert done.returncode == 0
    assert out.read_text() == f"{tmp_path}/locks/d0.lock,{tmp_path}/locks/d1.lock"


def test_killing_the_job_kills_its_child(server, tmp_path):
    marker = tmp_path / "started"
    script = f"import sys; from ketchup.worker import delegate; sys.exit(delegate({server!r}, 'sleep', [{str(marker)!r}]))"
    client = subprocess.Popen([sys.executable, "-c", script], env=_env())
    for _ in range(200):
        if marker.exists():
            break
        time.sleep(0.05)
    assert marker.exists()
    children = _sleeping_children(server)
    assert len(children) == 1
    client.send_signal(signal.SIGKILL)  # as Snakemake ends a job it gives up on
    client.wait(timeout=10)
    for _ in range(100):
        if not _alive(children[0]):
            break
        time.sleep(0.05)
    assert not _alive(children[0])
    assert worker.delegate(server, "ketchup", ["--help"]) == 0  # the server goes on


def _sleeping_children(address: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().split(b"\0")
                stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            # A forked child shares the server's command line; its process group is its own (setsid).
            if address.encode() in cmdline and int(stat[2]) == int(proc.name):
                pids.append(int(proc.name))
    return pids


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_without_a_server_the_job_runs_in_its_own_process(tmp_path):
    nobody = f"ketchup-test-none-{uuid.uuid4().hex[:8]}"
    out = _ketchup(_data_args("out"), tmp_path, nobody)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "out/train.jsonl").exists() and "ketchup.worker" not in out.stderr


def test_the_switch_and_cluster_jobs_bypass_the_server(server, tmp_path):
    for env in ({"KETCHUP_WARM_WORKER": "0"}, {"SLURM_JOB_ID": "7"}):
        out = _ketchup(_data_args("out"), tmp_path, server, **env)
        assert out.returncode == 0 and "ketchup.worker" not in out.stderr


def test_the_server_ends_with_the_process_that_started_it(tmp_path):
    address = f"ketchup-test-{uuid.uuid4().hex[:10]}"
    # A parent that starts the server and exits at once: the server must not outlive it.
    parent = subprocess.run(
        [sys.executable, "-c",
         "import subprocess, sys, os; p = subprocess.Popen([sys.executable, '-c', sys.argv[1], sys.argv[2], str(os.getpid())]);"
         " print(p.pid)", SERVER, address], env=_env(), capture_output=True, text=True, timeout=60)
    pid = int(parent.stdout.strip())
    for _ in range(200):
        if not _alive(pid):
            break
        time.sleep(0.05)
    assert not _alive(pid)
