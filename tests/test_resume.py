"""Resume fingerprints and checkpoint integrity, written as the probes of what went wrong before.

Each test runs a stage to completion (its checkpoints stay behind, as they do in the pipeline),
changes one thing, reruns it on the same checkpoint folder, and checks the result equals a fresh
run: a changed run never resumes from a stale checkpoint, and a damaged checkpoint is set aside.
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ketchup import checkpoints, stages
from ketchup.config import GENERATION_DEFAULTS, OPTIM_DEFAULTS, RL_DEFAULTS
from ketchup.data import sources
from ketchup.io import StorageError
from ketchup.models import build_model
from ketchup.tokenizer import train_tokenizer

TINY = {"d_model": 16, "d_kv": 4, "d_ff": 32, "num_layers": 1, "num_decoder_layers": 1, "num_heads": 4}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Data, a saved tiny model (teacher and RL init) with its tokenizer, and teacher outputs."""
    root = tmp_path_factory.mktemp("world")
    data = root / "data"
    sources.build("en_nl", {"source": "synthetic", "n_train": 40, "n_dev": 8, "n_test": 8}, 0, data)
    examples = sources.examples("en_nl", data / "train.jsonl")
    tok = train_tokenizer([t for e in examples for t in (e["source"], e["target"])], 200)
    model = build_model("seq2seq", {"config": TINY}, tok, seed=3)
    teacher = root / "teacher"
    model.save_pretrained(teacher)
    tok.save_pretrained(teacher)
    outputs = root / "teacher_outputs"
    outputs.mkdir()
    rows = [{"id": e["id"], "source": e["source"], "reference": e["target"], "prediction": e["target"]}
            for e in examples]
    (outputs / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"data": data, "teacher": teacher, "outputs": outputs}


def _spec(method="kl", **extra):
    spec = {"task": "en_nl", "arch": "seq2seq", "prompt": "", "student": "tiny", "method": method,
            "model": {"config": TINY},
            "train": {**OPTIM_DEFAULTS, "max_steps": 4, "batch_size": 8, "eval_every": 1, "checkpoint_every": 2,
                      "dev_eval_examples": 4},
            "rl": RL_DEFAULTS, "k": 1,
            "generation": {**GENERATION_DEFAULTS, "max_new_tokens": 8}, "seed": 0,
            "max_source_length": 32, "max_target_length": 16}
    for key, value in extra.items():
        spec[key] = {**spec[key], **value} if isinstance(value, dict) and key != "model" else value
    return spec


def _run(world, spec, run_dir: Path, data=None, init=None) -> dict:
    """Train a student into run_dir/out; return what must match between runs."""
    out, preds = run_dir / "out", run_dir / "predictions.jsonl"
    stages.student(spec=spec, data_dir=str(data or world["data"]), teacher_outputs_dir=str(world["outputs"]),
                   teacher_dir=str(world["teacher"]), init_dir=None if init is None else str(init),
                   ckpt_dir=str(run_dir / "ckpt"), out_dir=str(out), predictions_path=str(preds))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"weights": (out / "model.safetensors").read_bytes(), "predictions": preds.read_text(),
            "metrics": [{k: v for k, v in r.items() if k != "seconds"} for r in rows],
            "summary": json.loads((out / "train_summary.json").read_text())}


def _same(a: dict, b: dict) -> None:
    assert a["metrics"] == b["metrics"]
    assert a["predictions"] == b["predictions"]
    assert a["weights"] == b["weights"]


def _rerun_equals_fresh(world, tmp_path, first, second, capsys, **kwargs):
    _run(world, first, tmp_path / "run", **kwargs.get("first_kwargs", {}))
    capsys.readouterr()
    rerun = _run(world, second, tmp_path / "run", **kwargs.get("second_kwargs", {}))
    log = capsys.readouterr().err
    fresh = _run(world, second, tmp_path / "fresh", **kwargs.get("second_kwargs", {}))
    _same(rerun, fresh)
    assert "resuming from step" not in log
    return log


def test_changed_rl_rollout_starts_over(world, tmp_path, capsys):
    init = world["teacher"]  # any saved model of the task's vocabulary serves as the RL starting point
    sample, greedy = _spec("llmr", rl={"rollout": "sample"}), _spec("llmr", rl={"rollout": "greedy"})
    log = _rerun_equals_fresh(world, tmp_path, sample, greedy, capsys,
                              first_kwargs={"init": init}, second_kwargs={"init": init})
    assert "belongs to another configuration" in log and "starting over" in log
    # ... and the greedy run really differs from the sampled one it used to reuse
    assert _run(world, sample, tmp_path / "sampled", init=init)["metrics"] != \
        _run(world, greedy, tmp_path / "greedy", init=init)["metrics"]


def test_changed_prompt_starts_over(world, tmp_path, capsys):
    _rerun_equals_fresh(world, tmp_path, _spec(prompt=""), _spec(prompt="translate English to Dutch: "), capsys)


def test_changed_student_model_config_starts_over(world, tmp_path, capsys):
    wider = _spec(model={"config": {**TINY, "d_ff": 48}})
    _rerun_equals_fresh(world, tmp_path, _spec(), wider, capsys)


def test_changed_data_file_starts_over(world, tmp_path, capsys):
    edited = tmp_path / "edited_data"
    edited.mkdir()
    for split in ("train", "dev", "test"):
        (edited / f"{split}.jsonl").write_text((world["data"] / f"{split}.jsonl").read_text())
    spec = _spec("sft")  # trains on the data's own targets
    _run(world, spec, tmp_path / "run", data=edited)
    lines = (edited / "train.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    first["translation"]["nl"] = "iets heel anders"
    (edited / "train.jsonl").write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    capsys.readouterr()
    rerun = _run(world, spec, tmp_path / "run", data=edited)
    assert "starting over" in capsys.readouterr().err
    _same(rerun, _run(world, spec, tmp_path / "fresh", data=edited))


def test_unchanged_rerun_resumes(world, tmp_path, capsys):
    first = _run(world, _spec(), tmp_path / "run")
    capsys.readouterr()
    again = _run(world, _spec(), tmp_path / "run")
    assert "resuming from step 4 of 4" in capsys.readouterr().err
    _same(first, again)


def _checkpoint_files(ckpt: Path) -> list[str]:
    return sorted(str(p.relative_to(ckpt / "last")) for p in (ckpt / "last").rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def uninterrupted(world, tmp_path_factory):
    return _run(world, _spec(), tmp_path_factory.mktemp("clean"))


@pytest.mark.parametrize("victim", ["model.safetensors", "optimizer.bin", "trainer_state.json", "metrics.jsonl",
                                    "random_states_0.pkl", "manifest.json"])
def test_truncated_checkpoint_file_is_set_aside_and_the_run_ends_the_same(world, tmp_path, capsys, victim,
                                                                         uninterrupted):
    """Cut a file of the newest checkpoint in half: the rerun warns, falls back to the older
    checkpoint (step 2), trains on and ends with the uninterrupted run's numbers."""
    run = tmp_path / "run"
    _run(world, _spec(), run)
    ckpt = run / "ckpt"
    assert victim in _checkpoint_files(ckpt), _checkpoint_files(ckpt)
    path = ckpt / "last" / victim
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    capsys.readouterr()
    rerun = _run(world, _spec(), run)
    log = capsys.readouterr().err
    assert f"checkpoint {ckpt / 'last'} is incomplete or corrupt" in log
    assert "resuming from step 2 of 4" in log
    assert list(ckpt.glob("last.bad-*")), "the bad checkpoint is kept aside for inspection"
    _same(rerun, uninterrupted)


def test_every_checkpoint_damaged_starts_from_scratch(world, tmp_path, capsys, uninterrupted):
    run = tmp_path / "run"
    _run(world, _spec(), run)
    for name in ("last", "prev"):
        path = run / "ckpt" / name / "optimizer.bin"
        path.write_bytes(path.read_bytes()[:10])
    capsys.readouterr()
    rerun = _run(world, _spec(), run)
    log = capsys.readouterr().err
    assert "no usable checkpoint" in log and "resuming" not in log
    _same(rerun, uninterrupted)


def test_half_a_line_of_the_live_log_is_repaired_from_the_checkpoint(world, tmp_path, uninterrupted):
    run = tmp_path / "run"
    _run(world, _spec(), run)
    log = run / "ckpt" / "metrics.jsonl"
    log.write_text(log.read_text()[:-25])  # a killed write: the last line is cut
    _same(_run(world, _spec(), run), uninterrupted)


def test_damaged_best_model_falls_back_too(world, tmp_path, capsys, uninterrupted):
    run = tmp_path / "run"
    _run(world, _spec(), run)
    state = json.loads((run / "ckpt" / "last" / "trainer_state.json").read_text())
    best = run / "ckpt" / f"best-{state['best_step']}" / "model.safetensors"
    best.write_bytes(best.read_bytes()[:100])
    capsys.readouterr()
    rerun = _run(world, _spec(), run)
    assert "its best model" in capsys.readouterr().err
    _same(rerun, uninterrupted)


def test_manifest_names_the_problem(tmp_path):
    folder = tmp_path / "ck"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"12345")
    assert "no manifest" in checkpoints.problem(folder)
    checkpoints.seal(folder)
    assert checkpoints.problem(folder) is None
    (folder / "a.bin").write_bytes(b"123")
    assert "a.bin has 3 bytes, the manifest says 5" in checkpoints.problem(folder)
    (folder / "a.bin").write_bytes(b"12346")
    assert "does not match its digest" in checkpoints.problem(folder)


def test_full_disk_while_checkpointing_says_so_and_leaves_no_partial_checkpoint(world, tmp_path, monkeypatch):
    import accelerate

    def full(self, output_dir, **kwargs):
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "optimizer.bin").write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 1472 vs 1360")

    monkeypatch.setattr(accelerate.Accelerator, "save_state", full)
    with pytest.raises(StorageError, match="no space left on the device") as info:
        _run(world, _spec(), tmp_path / "run")
    assert "last.tmp" in str(info.value)
    ckpt = tmp_path / "run" / "ckpt"
    assert not (ckpt / "last.tmp").exists() and not (ckpt / "last").exists()
    assert not (tmp_path / "run" / "out").exists()


def test_disk_errors_passes_other_errors_through(tmp_path):
    with pytest.raises(OSError) as info, checkpoints.disk_errors(tmp_path):
        raise OSError(errno.EACCES, "permission denied")
    assert not isinstance(info.value, StorageError)
    with pytest.raises(StorageError, match=str(tmp_path)), checkpoints.disk_errors(tmp_path / "x"):
        raise OSError(errno.ENOSPC, "No space left on device")


def _cli(*args: str) -> subprocess.CompletedProcess:
    code = ("import sys\nfrom ketchup import cli\nrc = cli.main(sys.argv[1:])\n"
            "assert 'torch' not in sys.modules, 'torch was imported before the spec was checked'\nsys.exit(rc)")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


def _student_args(spec: dict, *extra: str) -> list[str]:
    return ["student", "--spec", json.dumps(spec), "--data", "d", "--teacher-outputs", "o", "--teacher", "t",
            "--checkpoints", "c", "--out", "m", "--predictions", "p.jsonl", *extra]


def test_student_command_refuses_an_unknown_method_before_importing_torch():
    result = _cli(*_student_args(_spec("klx")))
    assert result.returncode == 2, result.stderr
    assert "key 'method': unknown method 'klx'" in result.stderr


def test_student_command_refuses_rl_without_init():
    result = _cli(*_student_args(_spec("ketchup")))
    assert result.returncode == 2, result.stderr
    assert "starts from the 'kl' student" in result.stderr and "--init" in result.stderr


def test_student_command_names_missing_spec_keys():
    spec = _spec()
    del spec["generation"]
    result = _cli(*_student_args(spec))
    assert result.returncode == 2 and "missing key(s) generation" in result.stderr


def test_linear_schedule_decays_to_zero_at_the_last_step(world, tmp_path):
    spec = _spec(train={"lr_schedule": "linear", "lr": 1e-3})
    lrs = [r["lr"] for r in _run(world, spec, tmp_path / "run")["metrics"] if "lr" in r]
    assert lrs == pytest.approx([7.5e-4, 5e-4, 2.5e-4, 0.0])
    constant = [r["lr"] for r in _run(world, _spec(train={"lr": 1e-3}), tmp_path / "c")["metrics"] if "lr" in r]
    assert constant == pytest.approx([1e-3] * 4)


# --- train.group_by_length -------------------------------------------------------------------------

def _padded_tokens(batches, lengths):
    return sum(len(b) * max(lengths[i] for i in b) for b in batches)


def test_length_grouped_epoch_holds_every_example_once_and_pads_less():
    from ketchup.training import _micro_batch_indices

    lengths = tuple((i * 7919) % 61 + 3 for i in range(1000))  # varied lengths, no order in the index
    grouped = _micro_batch_indices(1000, 16, 0, 0, lengths)
    plain = _micro_batch_indices(1000, 16, 0, 0)
    assert sorted(i for b in grouped for i in b) == list(range(1000))
    assert [len(b) for b in grouped].count(16) == 62 and sorted(len(b) for b in grouped)[0] == 8
    # a random micro-batch of 16 pads to near the longest (63): grouping cuts most of that
    assert _padded_tokens(grouped, lengths) < 0.75 * _padded_tokens(plain, lengths)
    # seeded per (seed, epoch), and the micro-batches come in no length order (no long-to-short ramp)
    assert grouped == _micro_batch_indices(1000, 16, 0, 0, lengths)
    assert grouped != _micro_batch_indices(1000, 16, 0, 1, lengths) != _micro_batch_indices(1000, 16, 1, 0, lengths)
    # Hugging Face's order alone falls from long to short within each mega-batch (rises at 4 places)
    longest = [max(lengths[i] for i in b) for b in grouped]
    assert sum(b > a for a, b in zip(longest, longest[1:])) > 20


def test_group_by_length_off_keeps_the_plain_shuffle():
    from ketchup.training import _micro_batch_indices

    order = torch.randperm(50, generator=torch.Generator().manual_seed(2 * 100_003 + 3)).tolist()
    assert _micro_batch_indices(50, 8, 2, 3) == [order[i: i + 8] for i in range(0, 50, 8)]


def test_token_data_lengths_count_source_and_target():
    from ketchup.training import TrainData

    tok = train_tokenizer(["a b c d", "e f"], 60)
    data = TrainData(["a b c d", "e f"], ["e", "a b"]).encode(tok, "seq2seq", 32, 16)
    assert data.lengths() == tuple(len(s) + len(t) for s, t in (data.pair(0, 0), data.pair(1, 0)))
    assert data.lengths()[0] > data.lengths()[1]


def test_group_by_length_changes_the_batches_and_resumes_to_the_same_numbers(world, tmp_path, capsys):
    grouped = _spec(train={"group_by_length": True})
    first = _run(world, grouped, tmp_path / "fresh")
    assert first["metrics"] != _run(world, _spec(), tmp_path / "plain")["metrics"]
    run = tmp_path / "run"
    _run(world, grouped, run)
    last = run / "ckpt" / "last" / "optimizer.bin"
    last.write_bytes(last.read_bytes()[:10])  # the newest checkpoint is lost: resume from step 2
    capsys.readouterr()
    rerun = _run(world, grouped, run)
    assert "resuming from step 2 of 4" in capsys.readouterr().err
    _same(rerun, first)


# --- PPO: several updates per rollout batch ----------------------------------------------------------

PPO_RL = {"ppo_epochs": 2, "ppo_minibatches": 2}


def test_ppo_schedule_counts_updates_over_steps_of_rollouts(world, tmp_path):
    """4 steps of 2 x 2 updates: the linear schedule spans the 16 updates and reaches 0 at the last,
    logged after each step's last update as for one update a step; warmup counts steps too."""
    init = world["teacher"]
    spec = _spec("ketchup-ppo", rl=PPO_RL, train={"lr_schedule": "linear", "lr": 1e-3})
    rows = [r for r in _run(world, spec, tmp_path / "run", init=init)["metrics"] if "lr" in r]
    assert [r["lr"] for r in rows] == pytest.approx([7.5e-4, 5e-4, 2.5e-4, 0.0])
    assert [r["updates"] for r in rows] == [4] * 4 and all(r["rollouts"] == 8.0 for r in rows)
    assert all(0.0 <= r["clip_fraction"] <= 1.0 and r["approx_kl"] >= 0.0 for r in rows)
    warm = _spec("ketchup-ppo", rl={"ppo_epochs": 1, "ppo_minibatches": 2},
                 train={"warmup_steps": 2, "lr": 1e-3, "max_steps": 3})
    lrs = [r["lr"] for r in _run(world, warm, tmp_path / "warm", init=init)["metrics"] if "lr" in r]
    assert lrs == pytest.approx([5e-4, 1e-3, 1e-3])


def test_ppo_run_killed_inside_a_rollout_batch_resumes_to_the_same_numbers(world, tmp_path, capsys, monkeypatch):
    """Checkpoints stay at rollout-batch boundaries: a run killed after the first update of step 3
    (checkpoint at step 2) reruns that step's rollouts and updates and ends as an uninterrupted run."""
    from ketchup import training

    init = world["teacher"]
    spec = _spec("ketchup-ppo", rl=PPO_RL)
    fresh = _run(world, spec, tmp_path / "fresh", init=init)
    calls = []
    step = training._optimizer_step

    def killed(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2 * 4 + 2:  # the second update of step 3
            raise KeyboardInterrupt
        return step(*args, **kwargs)

    monkeypatch.setattr(training, "_optimizer_step", killed)
    with pytest.raises(KeyboardInterrupt):
        _run(world, spec, tmp_path / "run", init=init)
    monkeypatch.setattr(training, "_optimizer_step", step)
    capsys.readouterr()
    rerun = _run(world, spec, tmp_path / "run", init=init)
    assert "resuming from step 2 of 4" in capsys.readouterr().err
    _same(rerun, fresh)
