"""Devices per job (ketchup.devices, ketchup.launch) with fake device ids: no GPU needed.

Under profiles/workstation, jobs asking for one device each run on devices of their own, whatever
``--resources gpu=N`` lets Snakemake start; a job killed with SIGKILL frees its device for the next.
The jobs are a stand-in (tests/devices/Snakefile) started the way the pipeline's GPU rules start theirs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ketchup import devices, launch

from conftest import SRC

REPO_ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent / "devices"
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SLURM_JOB_ID", "CUDA_VISIBLE_DEVICES", "KETCHUP_WORKER")}
    env.update(PYTHONPATH=os.pathsep.join([str(SRC), str(HERE)]), KETCHUP_DEVICE_LOCKS=str(tmp_path / "locks"),
               **extra)
    return env


def test_available_devices_come_from_the_named_ids_then_cuda_visible_devices():
    assert devices.available({"KETCHUP_DEVICES": "0, 2,3", "CUDA_VISIBLE_DEVICES": "1"}) == ["0", "2", "3"]
    assert devices.available({"CUDA_VISIBLE_DEVICES": "1,5"}) == ["1", "5"]
    assert devices.available({"CUDA_VISIBLE_DEVICES": ""}) == []


def test_take_is_all_or_none_and_a_killed_holder_frees_its_devices(tmp_path, monkeypatch):
    monkeypatch.setenv("KETCHUP_DEVICE_LOCKS", str(tmp_path / "locks"))
    ids, fds = devices.take(2, ["a", "b", "c"])
    assert ids == ["a", "b"]
    assert devices.take(2, ["a", "b", "c"], wait=False) == ([], [])  # only c is free: nothing taken
    again, more = devices.take(1, ["a", "b", "c"], wait=False)
    assert again == ["c"]
    devices.release(fds + more)
    with pytest.raises(devices.DeviceError, match="needs 4 devices and only 3"):
        devices.take(4, ["a", "b", "c"])

    # A holder's descriptors are inherited by its children: the device is free once all have ended.
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from ketchup import devices; "
                               "devices.take(1, ['a']); print('held', flush=True); time.sleep(60)"],
                              env=_env(tmp_path), stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    assert devices.take(1, ["a"], wait=False) == ([], [])
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    ids, fds = devices.take(1, ["a"], wait=False)
    assert ids == ["a"]
    devices.release(fds)


def test_launch_sets_the_devices_and_keeps_the_schedulers(tmp_path):
    out = tmp_path / "0.json"
    cmd = [sys.executable, "-m", "ketchup.launch", "--processes", "1", "-m", "devices_probe", str(out), "0"]
    env = _env(tmp_path, KETCHUP_DEVICES="g0,g1", PROBE_SECONDS="0")
    subprocess.run(cmd, env=env, check=True, timeout=60)
    assert json.loads(out.read_text())["devices"] == "g0"
    # Under SLURM the scheduler chose: its CUDA_VISIBLE_DEVICES stays, no lock is taken.
    subprocess.run(cmd, env={**env, "SLURM_JOB_ID": "7", "CUDA_VISIBLE_DEVICES": "3"}, check=True, timeout=60)
    assert json.loads(out.read_text())["devices"] == "3"
    assert not (tmp_path / "locks").exists() or devices.take(2, ["g0", "g1"], wait=False)[0] == ["g0", "g1"]
    # Too many processes for the devices: a clear error before anything runs.
    failed = subprocess.run([*cmd[:3], "--processes", "3", *cmd[5:]], env=env, capture_output=True, text=True,
                            timeout=60)
    assert failed.returncode == 2 and "needs 3 devices and only 2" in failed.stderr


def test_accelerate_command_runs_one_task_of_n_processes_on_its_own_port():
    command = launch.accelerate_command(2, "ketchup", ["student", "--spec", "{}"], 29123)
    assert command[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert command[command.index("--num_processes") + 1] == "2"
    assert command[command.index("--main_process_port") + 1] == "29123"
    assert command[-5:] == ["-m", "ketchup", "student", "--spec", "{}"]


def _snakemake(workdir: Path, tmp_path: Path, config: dict, resources: str, **env: str) -> subprocess.CompletedProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    configfile = workdir / "config.json"
    configfile.write_text(json.dumps(config))
    cmd = [str(SNAKEMAKE), "-s", str(HERE / "Snakefile"), "--directory", str(workdir),
           "--profile", str(REPO_ROOT / "profiles" / "workstation"), "--cores", "8", "--resources", resources,
           "--set-threads", "student=1",  # the profile gives each GPU job 8 threads
           "--configfile", str(configfile)]
    return subprocess.run(cmd, env=_env(tmp_path, **env), capture_output=True, text=True, timeout=300)


def _overlap(a: dict, b: dict) -> bool:
    return a["start"] < b["end"] and b["start"] < a["end"]


@pytest.mark.parametrize("gpus", [4, 8])
def test_workstation_jobs_never_share_a_device(tmp_path, gpus):
    """Four fake devices, eight one-device jobs: with gpu=4 Snakemake runs four at a time, with gpu=8
    all eight at once and the locks hold four of them back; never two on one device at once."""
    run = _snakemake(tmp_path / "run", tmp_path, {"jobs": 8}, f"gpu={gpus}", KETCHUP_DEVICES="0,1,2,3",
                     PROBE_SECONDS="1")
    assert run.returncode == 0, run.stderr[-4000:]
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "run" / "out").glob("*.json"))]
    assert len(records) == 8
    assert all(r["devices"] in {"0", "1", "2", "3"} for r in records), records
    clashes = [(a["job"], b["job"], a["devices"]) for i, a in enumerate(records) for b in records[i + 1:]
               if a["devices"] == b["devices"] and _overlap(a, b)]
    assert not clashes
    assert len({r["devices"] for r in records}) == 4  # eight jobs of a second each: all four used


def test_a_job_killed_with_sigkill_frees_its_device_for_the_next(tmp_path):
    """One fake device, two jobs Snakemake starts at once: job 0 takes the device and dies by SIGKILL;
    job 1 asks for it once job 0 has recorded its run (just before its SIGKILL), and gets it once job 0
    is gone (with the device still held, it would wait until the run's timeout)."""
    config = {"jobs": 2, "after": {"1": "out/killed-0.json"}}
    run = _snakemake(tmp_path / "run", tmp_path, config, "gpu=2", KETCHUP_DEVICES="solo", PROBE_SECONDS="1",
                     PROBE_DIE="0")
    assert run.returncode != 0  # job 0 failed (keep-going: job 1 still ran)
    out = tmp_path / "run" / "out"
    killed, survivor = json.loads((out / "killed-0.json").read_text()), json.loads((out / "1.json").read_text())
    assert killed["devices"] == survivor["devices"] == "solo"
    assert survivor["start"] >= killed["end"]
    assert not (out / "0.json").exists()
