"""A stand-in GPU job for tests/test_devices.py, started by ``python -m ketchup.launch -m devices_probe``:
it records the devices it runs on and when, holds them a moment, and (a job named in PROBE_DIE)
kills itself with SIGKILL instead of ending."""

import json
import os
import signal
import sys
import time
from pathlib import Path

out, job = Path(sys.argv[1]), sys.argv[2]
record = {"job": job, "devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "start": time.time()}
time.sleep(float(os.environ.get("PROBE_SECONDS", "1")))
if job in os.environ.get("PROBE_DIE", "").split(","):
    record["end"] = time.time()
    (out.parent / f"killed-{job}.json").write_text(json.dumps(record))
    os.kill(os.getpid(), signal.SIGKILL)
record["end"] = time.time()
out.write_text(json.dumps(record))
