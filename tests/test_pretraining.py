"""Pretraining of the students: T5's span corruption, the documents and their held-out slice, the
sentinel tokens of trained tokenizers, and the pretrain stage (run, resumed, checked)."""

from __future__ import annotations

import itertools
import json
import math
import shutil

import pytest

from ketchup import specs
from ketchup.config import PRETRAIN_DEFAULTS, ConfigError
from ketchup.span_corruption import (SENTINELS, corrupt, noise_counts, random_spans_noise_mask, sentinel_token,
                                     span_corrupt)

S = [901, 902, 903, 904, 905, 906]  # sentinel ids
EOS = 1


def _runs(mask: list[bool]) -> list[bool]:
    """The value of each run of equal values."""
    return [value for value, _ in itertools.groupby(mask)]


def _uncorrupt(inputs: list[int], targets: list[int], sentinels: list[int]) -> list[int]:
    """The original sequence: each sentinel of the input replaced by what follows it in the target."""
    spans: dict[int, list[int]] = {}
    for token in targets[:-1]:
        if token in sentinels:
            current = spans.setdefault(token, [])
        else:
            current.append(token)
    return [t for token in inputs[:-1] for t in (spans[token] if token in sentinels else [token])]


# --- span corruption ------------------------------------------------------------------------------


def test_corrupt_by_hand():
    ids = [10, 11, 12, 13, 14, 15, 16, 17]
    mask = [False, False, True, True, False, False, True, True]
    assert corrupt(ids, mask, S, EOS) == ([10, 11, 901, 14, 15, 902, EOS], [901, 12, 13, 902, 16, 17, EOS])
    # a mask that ends with non-noise: the target ends with that span's sentinel (T5's form)
    assert corrupt([10, 11, 12], [False, True, False], S, EOS) == ([10, 901, 12, EOS], [901, 11, 902, EOS])


@pytest.mark.parametrize("length, noise, spans", [(96, 14, 5), (512, 77, 26), (20, 3, 1), (10, 2, 1), (2, 1, 1)])
def test_noise_counts_by_hand(length, noise, spans):
    # 96 * 0.15 = 14.4 -> 14, 14 / 3 = 4.67 -> 5; 512 * 0.15 = 76.8 -> 77, 77 / 3 = 25.7 -> 26;
    # 20 * 0.15 = 3 -> 1 span; 10 * 0.15 = 1.5 -> 2 (half to even), 2 / 3 -> 1; 2 tokens: one of each
    assert noise_counts(length, 0.15, 3.0) == (noise, spans)


def test_a_single_span_is_the_end_of_the_sequence_whatever_the_seed():
    """20 tokens: 3 noise tokens in 1 span, and the mask starts with non-noise and ends with noise."""
    ids = list(range(100, 120))
    for seed in range(5):
        assert random_spans_noise_mask(20, 0.15, 3.0, seed) == [False] * 17 + [True] * 3
        assert span_corrupt(ids, noise_density=0.15, mean_span_length=3.0, sentinel_ids=S, eos_id=EOS, seed=seed) \
            == (ids[:17] + [901, EOS], [901, *ids[17:], EOS])


@pytest.mark.parametrize("length, density, mean", [(100, 0.15, 3.0), (57, 0.15, 3.0), (40, 0.3, 2.0), (9, 0.5, 1.0)])
def test_noise_fraction_and_span_count(length, density, mean):
    noise, spans = noise_counts(length, density, mean)
    masks = [random_spans_noise_mask(length, density, mean, (7, seed)) for seed in range(50)]
    for mask in masks:
        assert sum(mask) == noise == round(length * density)
        assert _runs(mask) == [False, True] * spans  # alternating, non-noise first, noise last
    # the spans move with the seed: a small space of segmentations is covered, a large one rarely repeats
    possible = math.comb(noise - 1, spans - 1) * math.comb(length - noise - 1, spans - 1)
    distinct = len({tuple(m) for m in masks})
    assert distinct == possible if possible < 10 else distinct > 40
    if (length, density, mean) == (100, 0.15, 3.0):
        assert spans == 5  # 15 noise tokens at a mean span of 3


def test_input_and_target_reconstruct_the_sequence():
    sentinels = list(range(1000, 1000 + SENTINELS))
    for length in (1, 2, 3, 7, 31, 95, 300):
        ids = list(range(10, 10 + length))
        for seed in range(10):
            inputs, targets = span_corrupt(ids, noise_density=0.15, mean_span_length=3.0, sentinel_ids=sentinels,
                                           eos_id=EOS, seed=(0, seed))
            assert inputs[-1] == EOS and targets[-1] == EOS
            assert _uncorrupt(inputs, targets, sentinels) == ids
            # each span costs a sentinel on both sides (one token: no noise, the target a lone sentinel)
            assert len(inputs) + len(targets) == length + 2 + 2 * noise_counts(length, 0.15, 3.0)[1] - (length == 1)


def test_same_seed_same_corruption_and_too_few_sentinels_is_an_error():
    ids = list(range(10, 110))
    one = span_corrupt(ids, noise_density=0.15, mean_span_length=3.0, sentinel_ids=S, eos_id=EOS, seed=(3, 1, 2))
    assert one == span_corrupt(ids, noise_density=0.15, mean_span_length=3.0, sentinel_ids=S, eos_id=EOS,
                               seed=(3, 1, 2))
    assert one != span_corrupt(ids, noise_density=0.15, mean_span_length=3.0, sentinel_ids=S, eos_id=EOS,
                               seed=(3, 1, 3))
    with pytest.raises(ValueError, match="more than the 4 sentinel tokens"):
        span_corrupt(ids, noise_density=0.15, mean_span_length=3.0, sentinel_ids=S[:4], eos_id=EOS, seed=0)


# --- documents, tokenizer, data -------------------------------------------------------------------


EXAMPLES = [{"id": str(i), "source": f"source {i}", "target": f"target {i}"} for i in range(10)]


def test_documents_and_held_out_examples():
    from ketchup import pretraining

    assert pretraining.documents(EXAMPLES[:2]) == ["source 0", "target 0", "source 1", "target 1"]
    kept, held = pretraining.hold_out(EXAMPLES, 3, seed=0, where="students.tiny.pretrain.dev_examples")
    assert len(kept) == 7 and len(held) == 3
    assert sorted(kept + held, key=lambda e: int(e["id"])) == EXAMPLES  # disjoint, every example once
    assert kept == sorted(kept, key=lambda e: int(e["id"]))  # original order
    assert pretraining.hold_out(EXAMPLES, 3, 0, "w") == (kept, held)
    assert pretraining.hold_out(EXAMPLES, 3, 1, "w") != (kept, held)
    with pytest.raises(ConfigError, match="'students.tiny.pretrain.dev_examples': 10 held-out examples leave none"):
        pretraining.hold_out(EXAMPLES, 10, 0, "students.tiny.pretrain.dev_examples")


@pytest.fixture(scope="module")
def tokenizers():
    from ketchup.tokenizer import train_tokenizer

    texts = ["de kat zit op de mat", "the cat sat on the mat", "twelve dogs ran home"] * 5
    return train_tokenizer(texts, 80), train_tokenizer(texts, 80, sentinels=3)


def test_sentinels_are_added_after_the_trained_vocabulary(tokenizers):
    from ketchup.pretraining import sentinel_ids

    plain, with_sentinels = tokenizers
    n = len(plain)
    assert len(with_sentinels) == n + 3
    assert plain.get_vocab() == {t: i for t, i in with_sentinels.get_vocab().items() if i < n}  # nothing else moves
    assert sentinel_ids(with_sentinels) == [n, n + 1, n + 2] and sentinel_ids(plain) == []
    assert with_sentinels.convert_ids_to_tokens(n + 2) == sentinel_token(2)
    text = "the cat sat on de mat"
    ids = plain(text, add_special_tokens=False).input_ids
    assert with_sentinels(text, add_special_tokens=False).input_ids == ids
    assert with_sentinels.decode([*ids[:2], n, *ids[2:]], skip_special_tokens=True) == plain.decode(ids)


def test_span_corruption_data_is_seeded_per_document_and_epoch(tokenizers):
    from ketchup.pretraining import TRAIN_STREAM, span_corruption_data

    _, tok = tokenizers
    docs = [" ".join(["the cat sat on the mat", "twelve dogs ran home"] * 8), "de kat"]
    data = span_corruption_data(tok, docs, 61, 0.15, 3.0, seed=0, stream=TRAIN_STREAM)
    ids = tok(docs[0], add_special_tokens=False).input_ids[:60]  # max_length 61 less the EOS
    assert data.n == 2 and len(ids) == 60 and noise_counts(60, 0.15, 3.0) == (9, 3)
    assert data.pair(0, 0) == span_corrupt(ids, noise_density=0.15, mean_span_length=3.0,
                                           sentinel_ids=[len(tok) - 3, len(tok) - 2, len(tok) - 1],
                                           eos_id=tok.eos_token_id, seed=(0, TRAIN_STREAM, 0, 0))
    assert data.pair(0, 0) == data.pair(0, 0)
    assert len({tuple(data.pair(0, epoch)[1]) for epoch in range(8)}) > 1  # a fresh corruption each epoch


def test_next_token_documents_continue_an_empty_prompt(tokenizers):
    from ketchup.pretraining import next_token_data

    plain, _ = tokenizers
    data = next_token_data(["the cat sat", "de kat"]).encode(plain, "decoder", 8, 4)
    prompt = plain("\n", add_special_tokens=False).input_ids
    assert data.pair(0, 0) == (prompt, plain("the cat sat", add_special_tokens=False).input_ids[:3] + [plain.eos_token_id])
    assert data.pair(1, 5) == (prompt, plain("de kat", add_special_tokens=False).input_ids + [plain.eos_token_id])


# --- spec checks ----------------------------------------------------------------------------------


def _spec(arch="seq2seq", **extra):
    model = {"seq2seq": {"d_model": 16, "d_kv": 4, "d_ff": 32, "num_layers": 1, "num_decoder_layers": 1,
                         "num_heads": 4},
             "decoder": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4,
                         "num_key_value_heads": 2, "max_position_embeddings": 64}}[arch]
    spec = {"task": "en_nl", "arch": arch, "student": "tiny", "model": {"config": model},
            "pretrain": {**PRETRAIN_DEFAULTS, "steps": 4, "batch_size": 8, "warmup_steps": 0, "eval_every": 2,
                         "checkpoint_every": 2, "dev_examples": 2},
            "calculator": False, "tokenizer_gguf_file": None, "prompt_format": "chat", "seed": 0,
            "max_source_length": 32, "max_target_length": 16}
    return {**spec, **extra}


def test_too_few_sentinels_names_the_pretrain_block():
    specs.check_sentinels(_spec(max_source_length=649 + 1), SENTINELS)  # 32 spans: just enough
    with pytest.raises(ConfigError, match=r"'students.tiny.pretrain'.*650-token document.*33 spans"):
        specs.check_sentinels(_spec(max_source_length=650 + 1), SENTINELS)


def test_a_pretrained_student_needs_its_init():
    student = {"task": "en_nl", "arch": "seq2seq", "student": "tiny", "method": "sft", "train": {}, "generation": {},
               "seed": 0, "max_source_length": 8, "max_target_length": 8,
               "model": {"config": {}}, "pretrained": True}
    with pytest.raises(ConfigError, match="students.tiny is pretrained.*--init"):
        specs.check_student(student, None)
    specs.check_student(student, "results/models/pretrained/en_nl/tiny")
    specs.check_student({**student, "pretrained": False}, None)  # without a block: built from its spec
    student.pop("pretrained")
    specs.check_student(student, None)  # a hand-written spec that does not say is not pretrained


def test_the_workflow_gives_students_their_model_block_and_whether_they_are_pretrained(tmp_path):
    """The student spec the DAG writes: the size's model block without the pretrain stage's settings,
    and ``pretrained``, which the student command checks against --init."""
    import shlex
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), "-n", "-p",
                          "--configfile", str(repo / "workflow/configs/test.yaml"), "--directory", str(tmp_path),
                          "results/models/students/en_nl/tiny/sft/seed0"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    (line,) = [l for l in run.stdout.splitlines() if "-m ketchup --threads 1 student " in l]
    args = shlex.split(line.split(" > ")[0])
    spec = json.loads(args[args.index("--spec") + 1])
    assert spec["pretrained"] is True and "pretrain" not in spec["model"] and "config" in spec["model"]
    assert args[args.index("--init") + 1] == "results/models/pretrained/en_nl/tiny"


# --- the stage ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    """12 training examples (2 held out: 20 documents, 3 micro-batches of 8 an epoch) and tokenizers."""
    from ketchup.data import sources
    from ketchup.tokenizer import build

    root = tmp_path_factory.mktemp("pretrain")
    sources.build("en_nl", {"source": "synthetic", "n_train": 12, "n_dev": 4, "n_test": 4}, 0, root / "data")
    examples = sources.examples("en_nl", root / "data" / "train.jsonl")
    build(examples, 200, root / "tok", sentinels=SENTINELS)
    build(examples, 200, root / "tok_plain")
    return root


def _pretrain(task_dir, run, spec, tokenizer="tok") -> dict:
    from ketchup import stages

    stages.pretrain(spec=spec, data_path=str(task_dir / "data" / "train.jsonl"), tokenizer_dir=str(task_dir / tokenizer),
                    ckpt_dir=str(run / "ckpt"), out_dir=str(run / "out"))
    rows = [json.loads(line) for line in (run / "out" / "metrics.jsonl").read_text().splitlines()]
    return {"weights": (run / "out" / "model.safetensors").read_bytes(),
            "metrics": [{k: v for k, v in r.items() if k != "seconds"} for r in rows],
            "summary": json.loads((run / "out" / "train_summary.json").read_text())}


@pytest.fixture(scope="module")
def uninterrupted(task_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("clean")
    return run, _pretrain(task_dir, run, _spec())


def test_pretrain_stage_keeps_the_lowest_held_out_loss(uninterrupted):
    rows, summary = uninterrupted[1]["metrics"], uninterrupted[1]["summary"]
    dev = {r["step"]: r["dev_metric"] for r in rows if "dev_metric" in r}
    assert sorted(dev) == [0, 2, 4] and all(v < 0 for v in dev.values())  # minus a loss
    assert summary["steps"] == 4 and summary["role"] == "pretrain"
    assert summary["best_dev_metric"] == max(dev[2], dev[4]) and dev[summary["best_step"]] == summary["best_dev_metric"]
    assert [r["epoch"] for r in rows if "loss" in r] == pytest.approx([1 / 3, 2 / 3, 1, 4 / 3])  # a second epoch


def test_pretrained_model_matches_the_tokenizer_every_model_loads(task_dir, uninterrupted):
    from ketchup.models import load_model, load_tokenizer, prepare_tokenizer

    out = uninterrupted[0] / "out"
    tok = prepare_tokenizer(load_tokenizer(task_dir / "tok"), "seq2seq", "chat")  # as the teacher stage has it
    saved = load_tokenizer(out)
    assert saved.get_vocab() == tok.get_vocab() and saved.all_special_ids == tok.all_special_ids
    config = load_model("seq2seq", out).config
    assert config.vocab_size == len(tok) and config.pad_token_id == tok.pad_token_id == config.decoder_start_token_id
    assert config.eos_token_id == tok.eos_token_id


def test_pretrain_resumes_to_the_same_model(task_dir, tmp_path, capsys, uninterrupted):
    """Killed after the step-2 checkpoint: the rerun resumes there (in the second epoch's data too)
    and ends with the uninterrupted run's numbers and weights."""
    run = tmp_path / "run"
    shutil.copytree(uninterrupted[0] / "ckpt", run / "ckpt")
    shutil.rmtree(run / "ckpt" / "last")
    (run / "ckpt" / "prev").rename(run / "ckpt" / "last")  # what a kill between the step-2 and step-4 checkpoints leaves
    capsys.readouterr()
    resumed = _pretrain(task_dir, run, _spec())
    assert "resuming from step 2 of 4" in capsys.readouterr().err
    assert resumed == uninterrupted[1]


def test_pretrain_stage_refuses_a_tokenizer_without_sentinels(task_dir, tmp_path):
    with pytest.raises(ConfigError, match="'students.tiny.pretrain'.*more than the tokenizer's 0 sentinel tokens"):
        _pretrain(task_dir, tmp_path, _spec(), tokenizer="tok_plain")


def test_decoder_students_pretrain_on_next_tokens(task_dir, tmp_path):
    result = _pretrain(task_dir, tmp_path, _spec("decoder", pretrain={**_spec()["pretrain"], "steps": 2}),
                       tokenizer="tok_plain")
    assert result["summary"]["steps"] == 2 and [r["step"] for r in result["metrics"] if "dev_metric" in r] == [0, 2]
    losses = [r["loss"] for r in result["metrics"] if "loss" in r]
    assert len(losses) == 2 and all(loss > 0 for loss in losses)


def test_pretrain_command_refuses_a_loaded_student_before_importing_torch(tmp_path):
    import subprocess
    import sys

    code = ("import sys\nfrom ketchup import cli\nrc = cli.main(sys.argv[1:])\n"
            "assert 'torch' not in sys.modules, 'torch was imported before the spec was checked'\nsys.exit(rc)")
    spec = {**_spec(), "model": {"name_or_path": "t5-small"}}
    result = subprocess.run([sys.executable, "-c", code, "pretrain", "--spec", json.dumps(spec), "--data", "d",
                             "--tokenizer", "t", "--checkpoints", "c", "--out", "o"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "config key 'students.tiny.pretrain': only a student built from config" in result.stderr
