"""The GPUs a local job runs on: each job takes free devices before it loads a model and holds them
until its last process ends.

Snakemake counts a ``gpu`` resource but never says which device a job gets, so without this every
job of a multi-GPU machine would run on device 0. A job takes a device by holding an exclusive
``flock`` on one lock file per device (in ``KETCHUP_DEVICE_LOCKS``, default ``<tmp>/ketchup-devices``,
shared by every run on the machine). The lock belongs to the open file, which the job's processes
inherit: the kernel releases it when the last of them ends, killed with ``kill -9`` included.

The devices to choose from: ``KETCHUP_DEVICES`` (ids such as ``0,2,3``, or fake ids in tests), else
the ``CUDA_VISIBLE_DEVICES`` Snakemake runs with, else every device ``nvidia-smi -L`` lists; none
on a machine without GPUs (the job runs on the CPU). Under SLURM (``SLURM_JOB_ID`` set) the
scheduler has assigned the job's devices already: its ``CUDA_VISIBLE_DEVICES`` is kept as it is.

Standard library only: it runs in the job's own process before anything heavy is imported.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEVICES_ENV = "KETCHUP_DEVICES"  # the devices jobs may take, comma-separated ids
LOCKS_ENV = "KETCHUP_DEVICE_LOCKS"  # the folder of the lock files
FDS_ENV = "KETCHUP_DEVICE_FDS"  # the lock files' descriptors a job holds (the warm worker passes them on)
POLL_SECONDS = 0.5


class DeviceError(RuntimeError):
    """A job asks for more devices than the machine has."""


def scheduled() -> bool:
    """True when a scheduler (SLURM) assigned the job's devices."""
    return bool(os.environ.get("SLURM_JOB_ID"))


def available(env: dict[str, str] | None = None) -> list[str]:
    """The device ids local jobs share (module docstring); empty without GPUs."""
    env = os.environ if env is None else env
    for name in (DEVICES_ENV, "CUDA_VISIBLE_DEVICES"):
        if name in env:
            return [d.strip() for d in env[name].split(",") if d.strip()]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(listing.splitlines()) if line.startswith("GPU ")]


def lock_dir() -> Path:
    return Path(os.environ.get(LOCKS_ENV) or Path(tempfile.gettempdir()) / "ketchup-devices")


def _open_lock(folder: Path, device: str) -> int:
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in device)
    # Read-only opens may lock too: another user's run on the machine can lock a file this one made.
    fd = os.open(folder / f"{name}.lock", os.O_RDONLY | os.O_CREAT, 0o666)
    os.set_inheritable(fd, True)
    return fd


def take(n: int, devices: list[str] | None = None, wait: bool = True) -> tuple[list[str], list[int]]:
    """Take ``n`` free devices of ``devices`` (default ``available()``): their ids and the held lock
    descriptors (inheritable). All or none: a job holding some while waiting for more could block
    another that holds the rest. Waits until ``n`` are free; ``wait=False`` returns ([], []) instead."""
    devices = available() if devices is None else devices
    if n > len(devices):
        raise DeviceError(f"the job needs {n} devices and only {len(devices)} are available "
                          f"({','.join(devices) or 'none'}; {DEVICES_ENV} names them)")
    folder = lock_dir()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        folder.chmod(0o1777)  # shared by every user's runs, as /tmp is
    except OSError:
        pass
    while True:
        ids, fds = [], []
        for device in devices:
            fd = _open_lock(folder, device)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                continue
            ids.append(device)
            fds.append(fd)
            if len(ids) == n:
                return ids, fds
        release(fds)
        if not wait:
            return [], []
        time.sleep(POLL_SECONDS)


def release(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def held_fds(env: dict[str, str] | None = None) -> list[int]:
    """The lock descriptors this process inherited from its launcher (``FDS_ENV``)."""
    env = os.environ if env is None else env
    return [int(fd) for fd in env.get(FDS_ENV, "").split(",") if fd.strip()]


def die_with_parent() -> None:
    """Have the kernel kill this process when its parent dies (Linux), so that no process of a job
    outlives the job's launcher (killed with ``kill -9``) holding its devices."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the call
        os.kill(os.getpid(), signal.SIGKILL)


def _main() -> None:  # ``python -m ketchup.devices``: the devices local jobs may take
    print(",".join(available()) or "none", file=sys.stdout)


if __name__ == "__main__":
    _main()
