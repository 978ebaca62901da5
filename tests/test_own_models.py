"""Own models: a student must have the teacher's tokenizer (ketchup.tokenizer_match), checked at DAG
build for local folders and by the student job before any work; a model block given by
``name_or_path`` in an extending config replaces the inherited one; a missing local folder stops the
DAG build naming its key."""

from __future__ import annotations

import copy

import pytest
import yaml

from conftest import REPO_ROOT
from ketchup import config as kconfig
from ketchup.config import ConfigError
from ketchup.tokenizer_match import Vocab, check, local_folder, read_folder
from snakemake_runner import snakemake

TINY_T5 = {"d_model": 16, "d_kv": 4, "d_ff": 32, "num_layers": 1, "num_decoder_layers": 1, "num_heads": 4}


def en_nl_texts(n: int = 200) -> list[str]:
    from ketchup.data import synthetic

    return [text for row in synthetic.generate("en_nl", "train", n, 0) for text in row["translation"].values()]


def save_model(folder, tokenizer, seed: int = 0) -> None:
    """A tiny T5 built for ``tokenizer`` and saved with it, as save_pretrained writes a model of one's own."""
    from ketchup.models import build_model

    build_model("seq2seq", {"config": TINY_T5}, tokenizer, seed=seed).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def task_tokenizer(upper: bool = False):
    """A tokenizer trained on en_nl text (upper-cased: another token-to-id map), with T5's 32
    sentinels, so the default's student sizes can be pretrained with it."""
    from ketchup.tokenizer import train_tokenizer

    return train_tokenizer([t.upper() if upper else t for t in en_nl_texts()], 150, sentinels=32)


@pytest.fixture(scope="module")
def tokenizers_():
    """The task's tokenizer and another of the same size: same length, other token-to-id map."""
    task, other = task_tokenizer(), task_tokenizer(upper=True)
    assert len(task) == len(other)
    return task, other


# --- the comparison itself ---------------------------------------------------------------------------


def _vocab(name, tokens, pad=0, eos=1, start=None, rows=None):
    return Vocab(name, dict(enumerate(tokens)), pad, eos, start, rows)


def test_check_names_both_models_and_the_first_token_that_differs():
    teacher = _vocab("t", ["<pad>", "</s>", "a", "b", "c"])
    check(teacher, _vocab("s", ["<pad>", "</s>", "a", "b", "c"], rows=8), "students.x.name_or_path")  # padded rows
    check(teacher, _vocab("s", ["<pad>", "</s>", "a", "b", "c", "d"], rows=6), "k")  # ids beyond the teacher's
    with pytest.raises(ConfigError) as err:
        check(teacher, _vocab("s", ["<pad>", "</s>", "a", "x", "y"]), "students.x.name_or_path")
    message = str(err.value)
    assert "'students.x.name_or_path'" in message and "'s'" in message and "'t'" in message
    assert "id 3 is 'b' for the teacher and 'x' for the student" in message and "out of scope" in message


@pytest.mark.parametrize("change, words", [
    ({"pad": 2}, "different padding ids: 0 ('<pad>') for the teacher and 2 ('a')"),
    ({"eos": 0}, "different EOS ids: 1"),
    ({"start": 1}, "different decoder-start ids: 0"),
    ({"rows": 4}, "4 output rows, fewer than the teacher's tokenizer's 5 ids"),
])
def test_check_special_ids_and_rows(change, words):
    tokens = ["<pad>", "</s>", "a", "b", "c"]
    teacher = _vocab("t", tokens, start=0)
    student = _vocab("s", tokens, **{"start": 0, **change})
    with pytest.raises(ConfigError, match="config key 'k'") as err:
        check(teacher, student, "k")
    assert words in str(err.value)


def test_read_folder_agrees_with_transformers(tokenizers_, tmp_path):
    """The DAG build's file reader sees what transformers loads: the same id -> token map and specials."""
    from ketchup.models import load_tokenizer

    task, _ = tokenizers_
    save_model(tmp_path / "m", task)
    vocab = read_folder(tmp_path / "m", "m")
    loaded = load_tokenizer(str(tmp_path / "m"))
    assert vocab.tokens == {i: t for t, i in loaded.get_vocab().items()} and len(vocab.tokens) == len(loaded)
    assert (vocab.pad, vocab.eos, vocab.decoder_start, vocab.rows) == (loaded.pad_token_id, loaded.eos_token_id,
                                                                       loaded.pad_token_id, len(loaded))
    assert read_folder(tmp_path, "empty") is None  # no tokenizer.json: left to the job


def test_local_folder_rule(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "mine").mkdir(parents=True)
    assert local_folder("models/mine", "k").resolve() == tmp_path / "models" / "mine"
    assert local_folder("google-t5/t5-small", "k") is None and local_folder("t5-small", "k") is None  # hub names
    for missing in ("./mine", "models/other", str(tmp_path / "nothing"), "a/b/c", "~/no-such-model-here"):
        with pytest.raises(ConfigError, match=r"config key 'students\.s\.name_or_path'.*is not a folder"):
            local_folder(missing, "students.s.name_or_path")


# --- extends: a loaded model replaces the inherited block --------------------------------------------


def test_extending_with_a_loaded_model_replaces_the_inherited_block(default_config):
    base = copy.deepcopy(default_config)
    merged = kconfig.extend(base, {"students": {"small": {"name_or_path": "./models/s"}},
                                   "teacher": {"model": {"name_or_path": "./models/t"}}})
    assert merged["students"]["small"] == {"name_or_path": "./models/s"}  # config and pretrain gone
    assert merged["teacher"]["model"] == {"name_or_path": "./models/t"}
    assert merged["teacher"]["dtype"] == base["teacher"]["dtype"]  # the rest of the teacher block merges
    assert merged["students"]["base"] == base["students"]["base"]
    kconfig.validate({**merged, "tokenizer": {"kind": "pretrained"}})
    # the same source merges key by key, as before
    tweaked = kconfig.extend(base, {"students": {"small": {"config": {"d_model": 8}}}})
    assert tweaked["students"]["small"]["config"] == {**base["students"]["small"]["config"], "d_model": 8}
    assert tweaked["students"]["small"]["pretrain"] == base["students"]["small"]["pretrain"]
    assert base == default_config  # nothing mutated


# --- the student job stops before any work -----------------------------------------------------------


def _student_spec(folder, method="kl"):
    from ketchup.config import GENERATION_DEFAULTS, OPTIM_DEFAULTS

    return {"task": "en_nl", "arch": "seq2seq", "prompt": "", "student": "mine", "method": method,
            "model": {"name_or_path": str(folder)},
            "train": {**OPTIM_DEFAULTS, "max_steps": 2, "batch_size": 4, "eval_every": 1, "dev_eval_examples": 4},
            "rl": {}, "k": 1, "generation": {**GENERATION_DEFAULTS, "max_new_tokens": 6}, "seed": 0,
            "max_source_length": 32, "max_target_length": 8}


@pytest.mark.parametrize("method", ["kl", "prompted"])
def test_student_with_another_tokenizer_stops_before_any_work(tokenizers_, tmp_path, method):
    """The issue's case: a student saved with another tokenizer of the same size. Without the check
    kl trained silently and ketchup died with IndexError; now the job stops naming both models."""
    from ketchup import stages
    from ketchup.data import synthetic
    from ketchup.io import write_jsonl

    task, other = tokenizers_
    save_model(tmp_path / "teacher", task)
    save_model(tmp_path / "student", other, seed=1)
    data = tmp_path / "data"
    for split in ("train", "dev", "test"):
        write_jsonl(data / f"{split}.jsonl", synthetic.generate("en_nl", split, 4, 0))
    out = tmp_path / "out"
    with pytest.raises(ConfigError) as err:
        stages.student(spec=_student_spec(tmp_path / "student", method), data_dir=str(data),
                       teacher_outputs_dir=str(data), teacher_dir=str(tmp_path / "teacher"),
                       init_dir=None,
                       ckpt_dir=str(tmp_path / "ckpt"), out_dir=str(out), predictions_path=str(tmp_path / "p.jsonl"))
    message = str(err.value)
    first = next(i for i in range(len(task)) if task.convert_ids_to_tokens(i) != other.convert_ids_to_tokens(i))
    assert "config key 'students.mine.name_or_path'" in message and str(tmp_path / "student") in message
    assert str(tmp_path / "teacher") in message and f"id {first} is {task.convert_ids_to_tokens(first)!r}" in message
    assert not out.exists() and not (tmp_path / "ckpt").exists() and not (tmp_path / "p.jsonl").exists()


# --- the DAG build -------------------------------------------------------------------------------------


def test_dag_build_stops_at_a_local_student_with_another_tokenizer_or_a_missing_folder(tokenizers_, tmp_path):
    task, other = tokenizers_
    save_model(tmp_path / "models" / "teacher", task)
    save_model(tmp_path / "models" / "other", other, seed=1)
    (tmp_path / "config.yaml").write_text((REPO_ROOT / "config.yaml").read_text())
    variant = {"extends": "config.yaml", "tokenizer": {"kind": "pretrained"},
               "teacher": {"model": {"name_or_path": "./models/teacher"}},
               "students": {"small": {"name_or_path": "./models/other"}}}
    (tmp_path / "v.yaml").write_text(yaml.safe_dump(variant))
    proc = snakemake(tmp_path, tmp_path / "v.yaml", "-n", "results/tables/main.csv", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "config key 'students.small.name_or_path'" in out and "models/other" in out
    assert "models/teacher" in out and "the first id that differs" in out
    variant["students"]["small"]["name_or_path"] = "./models/no-such-student"
    (tmp_path / "v.yaml").write_text(yaml.safe_dump(variant))
    proc = snakemake(tmp_path, tmp_path / "v.yaml", "-n", "results/tables/main.csv", check=False)
    assert proc.returncode != 0 and not (tmp_path / "results").exists()
    assert "config key 'students.small.name_or_path': './models/no-such-student' is not a folder" in (
        proc.stdout + proc.stderr)
