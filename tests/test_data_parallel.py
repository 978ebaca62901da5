"""Data-parallel training, run as README tells users: ``accelerate launch --multi_gpu --num_processes 2
-m ketchup student ...``, here on CPU (two processes over gloo).

Two processes with one micro-batch each must take the very updates of one process accumulating two
over the same examples (same weights, token counts, loss, learning rate); a resumed two-process run
must end as an uninterrupted one; only the main process writes the log, checkpoints and outputs;
and each process draws its own random stream (samples, dropout), restored on resume.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ketchup import checkpoints
from ketchup.config import GENERATION_DEFAULTS, OPTIM_DEFAULTS, RL_DEFAULTS
from ketchup.data import sources
from ketchup.models import build_model
from ketchup.tokenizer import train_tokenizer
from ketchup.training import rank_seed

SRC = Path(__file__).resolve().parents[1] / "src"
TINY = {"d_model": 16, "d_kv": 4, "d_ff": 32, "num_layers": 1, "num_decoder_layers": 1, "num_heads": 4}
STEPS = 4


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Data, a tokenizer, a teacher, an RL starting point (both without dropout, so two processes can
    match one), one with dropout, and teacher outputs: the real ones, and one example repeated (every
    micro-batch the same, on both processes)."""
    root = tmp_path_factory.mktemp("world")
    data = root / "data"
    sources.build("en_nl", {"source": "synthetic", "n_train": 32, "n_dev": 8, "n_test": 8}, 0, data)
    examples = sources.examples("en_nl", data / "train.jsonl")
    tok = train_tokenizer([t for e in examples for t in (e["source"], e["target"])], 200)
    paths = {"data": data}
    for name, seed, dropout in (("teacher", 3, 0.0), ("init", 4, 0.0), ("init_dropout", 4, 0.1)):
        paths[name] = root / name
        build_model("seq2seq", {"config": {**TINY, "dropout_rate": dropout}}, tok, seed=seed).save_pretrained(
            paths[name])
    tok.save_pretrained(paths["teacher"])
    rows = [{"id": e["id"], "source": e["source"], "reference": e["target"], "prediction": e["target"]}
            for e in examples]
    for name, kept in (("outputs", rows), ("outputs_repeated", [rows[0]] * len(rows))):
        paths[name] = root / name
        paths[name].mkdir()
        (paths[name] / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    return paths


def _spec(method: str, grad_accum: int, **rl) -> dict:
    # A linear schedule with warmup: the learning rate of each step shows the scheduler's pace.
    return {"task": "en_nl", "arch": "seq2seq", "prompt": "", "student": "tiny", "method": method,
            "model": {"config": {**TINY, "dropout_rate": 0.0}},
            "train": {**OPTIM_DEFAULTS, "max_steps": STEPS, "batch_size": 4, "grad_accum": grad_accum,
                      "lr_schedule": "linear", "warmup_steps": 1, "eval_every": 2, "checkpoint_every": 2,
                      "dev_eval_examples": 4},
            "rl": {**RL_DEFAULTS, **rl}, "k": 1, "generation": {**GENERATION_DEFAULTS, "max_new_tokens": 8},
            "seed": 0, "max_source_length": 32, "max_target_length": 16}


def _args(world, spec: dict, run: Path, init: str | None, outputs: str) -> list[str]:
    return ["student", "--spec", json.dumps(spec), "--data", str(world["data"]),
            "--teacher-outputs", str(world[outputs]), "--teacher", str(world["teacher"]),
            "--checkpoints", str(run / "ckpt"), "--out", str(run / "out"), "--predictions", str(run / "pred.jsonl"),
            *(["--init", str(world[init])] if init else [])]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(world, spec: dict, run: Path, init: str | None = None, outputs: str = "outputs",
            processes: int = 2) -> str:
    """README's command: ``accelerate launch ... -m ketchup`` for several processes, else
    ``python -m ketchup``, on CPU with one thread each; its stderr."""
    launcher = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(_free_port())] if processes > 1 else []
    command = [sys.executable, *launcher, "-m", "ketchup", *_args(world, spec, run, init, outputs)]
    env = {k: v for k, v in os.environ.items() if k != "KETCHUP_WORKER"}  # never a warm server's job
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")])),
               OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-5000:]
    return result.stderr


def _metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "out" / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


# The dev-best model (the run's output) and the last step's (its newest checkpoint).
WEIGHTS = ("out/model.safetensors", "ckpt/last/model.safetensors")


def _result(run: Path) -> dict:
    return {"weights": [(run / w).read_bytes() for w in WEIGHTS], "metrics": _metrics(run),
            "predictions": (run / "pred.jsonl").read_text()}


def _assert_same_updates(two: Path, one: Path) -> None:
    """Weights to 1e-5; the same steps, token counts, learning rates and dev scores; loss and grad norm
    to float rounding (two processes sum the same terms in another order)."""
    for weights in WEIGHTS:
        a, b = load_file(two / weights), load_file(one / weights)
        assert a.keys() == b.keys()
        for name in a:
            assert torch.allclose(a[name], b[name], rtol=0, atol=1e-5), \
                (weights, name, float((a[name] - b[name]).abs().max()))
    rows_a, rows_b = _metrics(two), _metrics(one)
    assert [sorted(r) for r in rows_a] == [sorted(r) for r in rows_b]
    for ra, rb in zip(rows_a, rows_b):
        for key in ("step", "epoch", "tokens", "lr", "dev_metric"):
            assert ra.get(key) == rb.get(key), (key, ra, rb)
        for key in set(ra) - {"step", "epoch", "tokens", "lr", "dev_metric"}:
            assert ra[key] == pytest.approx(rb[key], rel=1e-5, abs=1e-6), (key, ra, rb)


@pytest.mark.parametrize("method,init", [("kl", None), ("llmr", "init"), ("ketchup-ppo", "init")])
def test_two_processes_take_the_updates_of_one_with_twice_the_accumulation(world, tmp_path, method, init):
    rl = {"rollout": "greedy", "rollout_dropout": False}  # deterministic rollouts: the same on any process
    if method == "ketchup-ppo":  # each micro-batch dealt by its index in the run, on any process
        rl.update(ppo_epochs=2, ppo_minibatches=2)
    _launch(world, _spec(method, 1, **rl), tmp_path / "two", init)
    _launch(world, _spec(method, 2, **rl), tmp_path / "one", init, processes=1)
    _assert_same_updates(tmp_path / "two", tmp_path / "one")
    # 4 steps over 2 x 4 examples each: a quarter of the 32 examples per step
    assert [r["epoch"] for r in _metrics(tmp_path / "two") if "loss" in r] == [0.25, 0.5, 0.75, 1.0]
    # Written once, by the main process: each step and each dev evaluation once in the log, a sound
    # checkpoint holding both processes' random states and nothing half-written, the test predictions.
    rows = _metrics(tmp_path / "two")
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in rows if "dev_metric" in r] == [0, 2, 4]
    last = tmp_path / "two" / "ckpt" / "last"
    assert checkpoints.problem(last) is None
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= {p.name for p in last.iterdir()}
    assert not [p.name for p in (tmp_path / "two" / "ckpt").iterdir() if ".tmp" in p.name or ".bad-" in p.name]
    assert len((tmp_path / "two" / "pred.jsonl").read_text().splitlines()) == 8
    assert (tmp_path / "two" / "pred.jsonl").read_text() == (tmp_path / "one" / "pred.jsonl").read_text()


def test_sampling_processes_draw_their_own_streams_and_resume_them(world, tmp_path):
    """Sampled rollouts with dropout, every micro-batch the same example: processes seeded alike would
    draw alike and end in the same random state. A run stopped after its step-2 checkpoint and
    resumed ends byte for byte as the uninterrupted one (each process restores its own stream)."""
    spec = _spec("llmr", 1, rollout="sample", rollout_dropout=True)
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    _launch(world, spec, whole, "init_dropout", "outputs_repeated")

    last = whole / "ckpt" / "last"
    states = [torch.load(last / f"random_states_{rank}.pkl", weights_only=False) for rank in (0, 1)]
    assert not torch.equal(states[0]["torch_manual_seed"], states[1]["torch_manual_seed"])
    assert states[0]["random_state"] != states[1]["random_state"]

    # Stopped after step 3: the newest checkpoint is step 2's (killed before step 4's was sealed).
    shutil.copytree(whole / "ckpt", resumed / "ckpt")
    shutil.rmtree(resumed / "ckpt" / "last")
    (resumed / "ckpt" / "prev").rename(resumed / "ckpt" / "last")
    assert json.loads((resumed / "ckpt" / "last" / "trainer_state.json").read_text())["step"] == 2
    stderr = _launch(world, spec, resumed, "init_dropout", "outputs_repeated")
    assert stderr.count(f"resuming from step 2 of {STEPS}") == 1
    assert _result(resumed) == _result(whole)


def test_rank_seeds():
    """The main process keeps the run's seed (one process is unchanged); every (seed, rank) its own."""
    assert [rank_seed(seed, 0) for seed in range(5)] == list(range(5))
    seeds = {rank_seed(seed, rank) for seed in range(5) for rank in range(8)}
    assert len(seeds) == 40 and all(0 <= s < 2**64 for s in seeds)
