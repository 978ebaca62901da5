"""A real OpenAI-compatible server on loopback for judge tests and benchmarks: llm-katan
(PyPI, pinned in the ``test`` extra), transformers backend, serving a local model folder offline.

``KatanServer(model_dir, name, workdir)`` starts ``llm-katan`` on 127.0.0.1 (a free port), waits
for ``GET /health`` with a bounded timeout, and always kills it (``stop``, ``with``). It raises
:class:`Unavailable` with the reason when the server cannot start (llm-katan not installed, the
port taken, the model not loadable, no answer in time), after killing what it started.
:meth:`KatanServer.metrics` reads the server's own request and token counters.

llm-katan runs one generation at a time (``--max-concurrent 1``); it takes ``response_format``
and ignores a JSON schema in it, so it checks repair turns and accounting, not the fallback.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


class Unavailable(RuntimeError):
    """The server cannot be started here (the message says why)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class KatanServer:
    def __init__(self, model_dir: str | os.PathLike, name: str, workdir: str | os.PathLike,
                 ready_timeout_s: float = 240.0, port: int | None = None, quantize: bool = True):
        self.model_dir, self.name = Path(model_dir), name
        self.quantize = quantize  # llm-katan's default on CPU: int8 dynamic quantisation, several times faster
        self.workdir = Path(workdir)
        self.ready_timeout_s = ready_timeout_s
        self.port = port or free_port()
        self.log_path = self.workdir / "llm-katan.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def log_tail(self, n: int = 1500) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def start(self) -> "KatanServer":
        try:
            import llm_katan  # noqa: F401
        except ImportError:
            raise Unavailable("llm-katan is not installed (pip install -e '.[test]')") from None
        with socket.socket() as sock:  # a clear reason when the port is taken
            try:
                sock.bind(("127.0.0.1", self.port))
            except OSError as exc:
                raise Unavailable(f"port {self.port} on 127.0.0.1 is busy: {exc}") from None
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_KATAN_")}
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
        cmd = [sys.executable, "-c", "from llm_katan.cli import main; main()",
               "--model", str(self.model_dir), "--served-model-name", self.name,
               "--host", "127.0.0.1", "--port", str(self.port), "--backend", "transformers", "--device", "cpu",
               "--quantize" if self.quantize else "--no-quantize", "--max-concurrent", "1", "--disable-dashboard",
               "--stats-file", str(self.workdir / "llm-katan-stats.json")]
        with open(self.log_path, "wb") as log:
            # its own session: stop() kills the server and anything it started, nothing else
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         cwd=self.workdir, start_new_session=True)
        deadline = time.monotonic() + self.ready_timeout_s
        try:
            while True:
                if self.proc.poll() is not None:
                    raise Unavailable(f"llm-katan exited with code {self.proc.returncode} before it was ready: "
                                      f"{self.log_tail(600)}")
                try:
                    with urllib.request.urlopen(self.url + "/health", timeout=2) as resp:
                        if resp.status == 200:
                            return self
                except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                    pass
                if time.monotonic() > deadline:
                    raise Unavailable(f"llm-katan not ready on 127.0.0.1:{self.port} within "
                                      f"{self.ready_timeout_s:.0f} s: {self.log_tail(600)}")
                time.sleep(0.5)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=15)

    def metrics(self) -> dict[str, int]:
        """The server's own counters: requests answered, prompt and completion tokens."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as resp:
            text = resp.read().decode()
        out = {}
        for key, metric in (("requests", "llm_katan_requests_total"), ("prompt_tokens", "llm_katan_prompt_tokens_total"),
                            ("completion_tokens", "llm_katan_completion_tokens_total")):
            m = re.search(rf"^{metric}\{{[^}}]*\}} (\d+)$", text, re.M)
            if m is None:
                raise RuntimeError(f"no {metric} in llm-katan's /metrics: {text[:300]}")
            out[key] = int(m.group(1))
        return out

    def request_sizes(self) -> list[int]:
        """The number of messages of every chat request the server logged, in order."""
        return [int(n) for n in re.findall(r"openai \| [^|]+ \| model=\S+ messages=(\d+)", self.log_tail(10 ** 7))]

    def __enter__(self) -> "KatanServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
