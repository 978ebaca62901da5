"""What every ``python -m ketchup...`` command shares: its setup, JSON specs, quiet imports of the
model stack, and the device and precision models run in.

It sits below the command lines (ketchup.cli, ketchup.analysis.__main__) and the stages, so the
analyses and the judge take these helpers from here and never import a command line or stages.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import logging
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported by the functions that need it: the light commands never load it
    import torch

# Modules of the commands that load models (torch, transformers, accelerate), imported up front.
MODEL_MODULES = ("ketchup.stages", "ketchup.models", "ketchup.methods", "ketchup.training")


def json_spec(text: str) -> dict:
    """A JSON object given inline or as @path."""
    if text.startswith("@"):
        with open(text[1:]) as handle:
            return json.load(handle)
    return json.loads(text)


def required(parser: argparse.ArgumentParser, *names: str, **helps: str) -> None:
    """Required options ``--name`` (paths and names), declared in one line per subcommand;
    ``helps`` by the option's name with ``_`` for ``-``."""
    for name in names:
        parser.add_argument(f"--{name}", required=True, help=helps.get(name.replace("-", "_")))


def setup(args: argparse.Namespace) -> None:
    """Logging and torch's thread count, shared by every `python -m ketchup...` command line."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


def run_command(parser: argparse.ArgumentParser, argv: list[str] | None, name: str, dest: str,
                errors: tuple[type[Exception], ...]) -> int:
    """Parse ``argv``, set up, run the subcommand's function (``set_defaults(func=...)``).

    One of ``errors`` (bad input, named by file, line or config key) ends the command with one line
    ``<name> <subcommand>: error: ...`` on stderr and exit status 2; anything else is a bug and raises.
    """
    args = parser.parse_args(argv)
    setup(args)
    try:
        args.func(args)
    except errors as exc:
        print(f"{name} {getattr(args, dest)}: error: {exc}", file=sys.stderr)
        return 2
    _leave_process_group()
    return 0


def _leave_process_group() -> None:
    """End an N-process job's process group once every process is done. Left to interpreter exit,
    gloo's threads are torn down unjoined and a process can abort (SIGABRT, "terminate called without
    an active exception") after its work is done, which fails the whole job."""
    dist = sys.modules.get("torch.distributed")  # never imported here: a 1-process job has no group
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def import_quietly(*modules: str) -> None:
    """Import ``modules`` with the cyclic garbage collector paused, then freeze what they built.

    torch and transformers create millions of objects while importing; collecting among them cost
    about 1 s of every job (of ~5 s of imports), and frozen objects are skipped by every later
    collection, training included.
    """
    gc.disable()
    try:
        for name in modules:
            importlib.import_module(name)
    finally:
        gc.freeze()
        gc.enable()


def compute_device() -> torch.device:
    """The GPU if there is one (a process of an N-process job: its own, by ``LOCAL_RANK``), else the CPU."""
    import torch

    if not torch.cuda.is_available():
        return torch.device("cpu")
    if "LOCAL_RANK" in os.environ:  # set by `accelerate launch` (ketchup.launch) for each process
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device("cuda")


def process_share() -> tuple[int, int]:
    """(this process's index, processes) of the job: (0, 1) outside ``accelerate launch``."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    import torch
    from accelerate import PartialState

    # cpu=True where there is no GPU: else accelerate takes a CPU job's processes for one (world 1).
    state = PartialState(cpu=not torch.cuda.is_available())
    return state.process_index, state.num_processes


def teacher_dtype(setting: str = "auto") -> torch.dtype | None:
    """The teacher's weights when it runs without gradient (``teacher.dtype``): ``auto`` is bf16 on a
    GPU that has it, float32 on one without (never fp16: T5's activations overflow its range, and the
    rewards are read from the logits), None (as saved: the teacher stage saves float32) on the CPU."""
    import torch

    if setting != "auto":
        return {"float32": torch.float32, "bfloat16": torch.bfloat16}[setting]
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return None
