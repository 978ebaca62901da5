"""A warm process for a local run's jobs: the model stack is imported once, and each job is a fork.

Every job of the pipeline is ``python -m ketchup ...`` or ``python -m ketchup.analysis ...``, and a
fresh interpreter spends about 3.5 s importing torch, transformers and accelerate before it does
anything: on the default, that is a fifth of all the CPU time of a run whose jobs mostly train
for 10 to 30 s. So a local Snakemake run starts one server (``onstart`` in workflow/rules/
common.smk) that imports them and then, for each job, forks a child that runs the job's command
line in the job's working directory, with its environment and its stdin, stdout and stderr (passed
over the socket, so the rule's ``> {log} 2>&1`` holds). The job's own process waits for the exit
status and returns it; when Snakemake kills a job, the dropped connection kills the child's
process group. Nothing is shared between jobs but the imported modules: every job seeds itself
(the numbers are the same as from a fresh process, tests/test_worker.py).

A job without a server (cluster jobs, a job run by hand, ``KETCHUP_WARM_WORKER=0``) runs in its own
process as before. Light on purpose: the client side imports the standard library only.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import select
import signal
import socket
import struct
import sys
import traceback
import uuid

from ketchup.devices import FDS_ENV, held_fds

ADDRESS_ENV = "KETCHUP_WORKER"  # the server's socket, set for the jobs by the process that started it
SWITCH_ENV = "KETCHUP_WARM_WORKER"  # "0" turns the server off
# What each job would import anyway; imported in the server with ``runtime.import_quietly``.
PRELOAD = ("torch", "transformers", "accelerate", "ketchup.stages", "ketchup.models", "ketchup.methods",
           "ketchup.training", "ketchup.metrics", "ketchup.cli", "ketchup.analysis.__main__", "ketchup.analysis.figures")
_STATUS = struct.Struct("!i")
_LENGTH = struct.Struct("!I")
_MAX_FDS = 3 + 64  # stdin, stdout, stderr and the job's device locks


def main_of(module: str):
    """The ``main(argv) -> int`` of a command-line module (ketchup or ketchup.analysis)."""
    if module == "ketchup":
        from ketchup.cli import main
    elif module == "ketchup.analysis":
        from ketchup.analysis.__main__ import main
    else:
        raise ValueError(f"not a ketchup command line: {module}")
    return main


def run(module: str, argv: list[str]) -> int:
    """Run one command line: in the warm server when there is one, else in this process."""
    address = os.environ.get(ADDRESS_ENV)
    # A cluster job can share a host (and so an abstract socket) with a local run's server.
    if address and os.environ.get(SWITCH_ENV, "1") != "0" and not os.environ.get("SLURM_JOB_ID"):
        status = delegate(address, module, argv)
        if status is not None:
            return status
    return main_of(module)(argv)


def delegate(address: str, module: str, argv: list[str]) -> int | None:
    """Ask the server at ``address`` to run the command; its exit status, or None when no server answers."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(_sockaddr(address))
    except OSError:
        conn.close()
        return None
    body = json.dumps({"module": module, "argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
    with conn:
        sys.stdout.flush()
        sys.stderr.flush()
        # The job's devices' locks go along: the forked child holds them until it ends (ketchup.devices).
        socket.send_fds(conn, [_LENGTH.pack(len(body))], [0, 1, 2, *held_fds()])
        conn.sendall(body)
        reply = _read_exactly(conn, _STATUS.size)
    if reply is None:  # the server went away with the job: never rerun it behind its back
        print(f"ketchup: the warm worker at {address} stopped before the job ended", file=sys.stderr)
        return 1
    return _STATUS.unpack(reply)[0]


def _sockaddr(address: str) -> str:
    # Linux's abstract namespace: no file to clean up, nothing on a shared file system.
    return "\0" + address


def _read_exactly(conn: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def new_address() -> str:
    return f"ketchup-worker-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def serve(address: str, preload: tuple[str, ...] = PRELOAD, parent: int | None = None) -> None:
    """Accept jobs until the process that started the server (``parent``) is gone or SIGTERM comes."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(_sockaddr(address))  # bound before the imports: early jobs wait instead of importing too
    listener.listen(128)
    # A CUDA check while importing must not initialise CUDA here: a forked job could not use it, nor
    # run on the devices it took (ketchup.devices). NVML answers such checks without initialising it.
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    from ketchup.runtime import import_quietly

    import_quietly(*preload)
    running: dict[int, socket.socket] = {}  # child pid -> its job's connection
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    try:
        while not stopping and (parent is None or os.getppid() == parent):
            try:
                readable, _, _ = select.select([listener, *running.values()], [], [], 0.2)
            except InterruptedError:
                continue
            for sock in readable:
                if sock is listener:
                    if not _start_job(listener, running):
                        stopping.append(True)
                elif not sock.recv(1):  # the job's process died (killed by Snakemake): so does the child
                    pid = next(p for p, s in running.items() if s is sock)
                    _kill_group(pid)
            _reap(running)
    finally:
        for pid in running:
            _kill_group(pid)
        listener.close()


def _start_job(listener: socket.socket, running: dict[int, socket.socket]) -> bool:
    """Fork the child for one job; False when the request asks the server to stop."""
    conn, _ = listener.accept()
    try:
        head, fds, _, _ = socket.recv_fds(conn, _LENGTH.size, _MAX_FDS)
        request = json.loads(_read_exactly(conn, _LENGTH.unpack(head)[0]) or b"null")
    except (OSError, struct.error, ValueError):
        conn.close()
        return True
    if not isinstance(request, dict) or len(fds) < 3:
        for fd in fds:
            os.close(fd)
        conn.close()
        return request != "stop"
    pid = os.fork()
    if pid == 0:
        listener.close()
        for other in running.values():
            other.close()
        os._exit(_run_child(conn, fds, request))
    for fd in fds:
        os.close(fd)
    running[pid] = conn
    return True


def _run_child(conn: socket.socket, fds: list[int], request: dict) -> int:
    """The job, in the forked child: its own process group, descriptors, directory and environment."""
    conn.close()
    os.setsid()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    for target, fd in enumerate(fds[:3]):
        os.dup2(fd, target)
        os.close(fd)
    status = 1
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        if len(fds) > 3:  # the device locks, held open until the job ends, under their numbers here
            os.environ[FDS_ENV] = ",".join(map(str, fds[3:]))
        sys.argv = [request["module"], *request["argv"]]
        status = main_of(request["module"])(request["argv"])
    except SystemExit as exc:  # argparse's errors and --help
        status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        # Snakemake's benchmark of the job measures the waiting client: the job's own use goes in its log.
        usage = resource.getrusage(resource.RUSAGE_SELF)
        print(f"ketchup.worker: job used {usage.ru_utime + usage.ru_stime:.1f} s CPU, "
              f"max RSS {usage.ru_maxrss / 1024:.0f} MiB", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
    return status or 0


def _reap(running: dict[int, socket.socket]) -> None:
    while running:
        try:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = running.pop(pid, None)
        if conn is None:
            continue
        status = os.waitstatus_to_exitcode(wait_status)
        try:
            conn.sendall(_STATUS.pack(status if status >= 0 else 128 - status))
        except OSError:
            pass
        conn.close()


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def start(log_path: str, src: str) -> str | None:
    """Start a server for this process's run (its jobs find it through the environment); its address."""
    import subprocess

    if os.environ.get(SWITCH_ENV, "1") == "0":
        return None
    address = new_address()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])))
    os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
    with open(log_path, "ab") as log:
        subprocess.Popen([sys.executable, "-m", "ketchup.worker", address, str(os.getpid())], env=env,
                         stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    os.environ[ADDRESS_ENV] = address
    return address


def stop(address: str | None) -> None:
    """Ask the server to end (it ends by itself, too, when its parent is gone)."""
    if address:
        os.environ.pop(ADDRESS_ENV, None)
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(_sockaddr(address))
            body = json.dumps("stop").encode()
            conn.sendall(_LENGTH.pack(len(body)) + body)
        except OSError:
            pass
        finally:
            conn.close()


if __name__ == "__main__":
    serve(sys.argv[1], parent=int(sys.argv[2]) if len(sys.argv) > 2 else None)
