"""How the rules start a GPU job: ``python -m ketchup.launch --processes N -m ketchup ARGS...``.

It takes the job's N devices (ketchup.devices; none on a machine without GPUs, the scheduler's under
SLURM), sets ``CUDA_VISIBLE_DEVICES`` to them, and runs ``python -m ketchup ARGS`` with them: in this
process for N = 1 (a local run's warm worker then forks the job, receiving the held locks), else
under ``accelerate launch --num_processes N`` (DDP: NCCL on GPUs, gloo on the CPU) on a free port
of the job's own. The job's exit status is the command's; its processes end with it (a launcher
killed with ``kill -9`` takes them along), and the devices are free once they have.

Standard library only: no model is imported before the devices are held.
"""

from __future__ import annotations

import argparse
import os
import runpy
import signal
import socket
import subprocess
import sys

from ketchup import devices

WORKER_ENV = "KETCHUP_WORKER"  # ketchup.worker.ADDRESS_ENV (not imported: it is the job side's)
DIE_ENV = "KETCHUP_DIE_WITH_PARENT"  # set for the processes of an N-process job (ketchup/__main__.py)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_command(processes: int, module: str, args: list[str], port: int) -> list[str]:
    """``accelerate launch`` for ``processes`` processes on this machine (``--multi_gpu`` is its DDP
    launcher; on a CPU it runs over gloo). The precision is the training settings' own."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--machine_rank", "0", "--main_process_port", str(port),
            "--mixed_precision", "no", "--dynamo_backend", "no", "-m", module, *args]


def take_devices(processes: int) -> list[int]:
    """One device per process, set in this process's environment; the held lock descriptors."""
    if devices.scheduled():
        return []
    ids = devices.available()
    if not ids:
        return []
    taken, fds = devices.take(processes, ids)
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(taken)
    os.environ[devices.FDS_ENV] = ",".join(map(str, fds))
    print(f"ketchup.launch: running on devices {','.join(taken)}", file=sys.stderr, flush=True)
    return fds


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m ketchup.launch", usage="%(prog)s [--processes N] -m MODULE ARGS...",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=1, help="processes (and devices) of the job")
    # Everything after `-m MODULE` is the module's, as with python -m.
    split = argv.index("-m") if "-m" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    if split + 1 >= len(argv):
        parser.error("-m MODULE is required")
    args.module, args.args = argv[split + 1], argv[split + 2:]
    if args.processes < 1:
        parser.error("--processes must be at least 1")
    try:
        fds = take_devices(args.processes)
    except devices.DeviceError as exc:
        print(f"ketchup.launch: error: {exc}", file=sys.stderr)
        return 2
    if args.processes == 1:
        sys.argv = [args.module, *args.args]
        try:
            runpy.run_module(args.module, run_name="__main__", alter_sys=True)
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        return 0
    env = {k: v for k, v in os.environ.items() if k != WORKER_ENV}  # each process imports for itself
    env[DIE_ENV] = "1"
    command = accelerate_command(args.processes, args.module, args.args, free_port())
    child = subprocess.Popen(command, env=env, pass_fds=fds, preexec_fn=devices.die_with_parent)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, _: child.send_signal(signum))
    status = child.wait()
    return status if status >= 0 else 128 - status


if __name__ == "__main__":
    sys.exit(main())
