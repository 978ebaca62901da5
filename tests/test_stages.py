"""Stage functions called directly on tiny models saved to disk (as a hub checkpoint would be)."""

from __future__ import annotations

import json

import pytest
import torch

from ketchup import stages
from ketchup.config import GENERATION_DEFAULTS, OPTIM_DEFAULTS
from ketchup.data import sources
from ketchup.models import build_model, load_model
from ketchup.tokenizer import train_tokenizer


def _pretrained(tmp_path):
    data = tmp_path / "data"
    sources.build("en_nl", {"source": "synthetic", "n_train": 40, "n_dev": 8, "n_test": 8}, 0, data)
    examples = sources.examples("en_nl", data / "train.jsonl")
    tok = train_tokenizer([t for e in examples for t in (e["source"], e["target"])], 200)
    model = build_model("seq2seq", {"config": {"d_model": 16, "d_kv": 4, "d_ff": 32, "num_layers": 1,
                                               "num_decoder_layers": 1, "num_heads": 4}}, tok, seed=3)
    path = tmp_path / "pretrained"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return data, path, model


def _spec(path, **extra):
    return {"task": "en_nl", "arch": "seq2seq", "prompt": "", "model": {"name_or_path": str(path)},
            "train": {**OPTIM_DEFAULTS, "max_steps": 2, "batch_size": 8, "eval_every": 1, "dev_eval_examples": 4},
            "generation": {**GENERATION_DEFAULTS, "max_new_tokens": 8}, "seed": 0,
            "max_source_length": 32, "max_target_length": 16, **extra}


def test_teacher_without_finetuning_is_the_loaded_checkpoint(tmp_path):
    data, path, model = _pretrained(tmp_path)
    out = tmp_path / "teacher"
    stages.teacher(spec=_spec(path, finetune=False), data_dir=str(data), tokenizer_dir=str(path),
                   ckpt_dir=str(tmp_path / "ckpt"), out_dir=str(out))
    loaded = load_model("seq2seq", out)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert json.loads((out / "train_summary.json").read_text())["steps"] == 0


def test_teacher_finetunes_a_checkpoint_loaded_by_path(tmp_path):
    data, path, model = _pretrained(tmp_path)
    out = tmp_path / "teacher"
    stages.teacher(spec=_spec(path), data_dir=str(data), tokenizer_dir=str(path), ckpt_dir=str(tmp_path / "ckpt"),
                   out_dir=str(out))
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 2 and summary["best_step"] in (1, 2)
    loaded = load_model("seq2seq", out)
    changed = [not torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values())]
    assert any(changed)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    assert [r["step"] for r in rows if "dev_metric" in r] == [0, 1, 2]


@pytest.mark.parametrize("arch", ["seq2seq", "decoder"])
def test_trained_tokenizer_round_trips_beside_a_model_config(arch, tmp_path):
    """Saved next to a model's config.json, the trained tokenizer must still encode and decode the same."""
    from ketchup.models import load_tokenizer

    text = "Gisteren zag de hond 12 katten.\\n#### 12"
    tok = train_tokenizer([text, "De kat zit op de mat."] * 5, 120)
    config = {"seq2seq": {"d_model": 16, "d_kv": 4, "d_ff": 32, "num_layers": 1, "num_decoder_layers": 1,
                          "num_heads": 4},
              "decoder": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                          "num_attention_heads": 4, "num_key_value_heads": 2}}[arch]
    build_model(arch, {"config": config}, tok).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    ids = loaded(text, add_special_tokens=False).input_ids
    assert ids == tok(text, add_special_tokens=False).input_ids
    assert loaded.decode(ids) == text


def test_student_job_predicts_the_test_split_with_its_saved_dev_best_model(tmp_path):
    data, path, _ = _pretrained(tmp_path)
    spec = _spec(path, method="sft", student="tiny", train={**_spec(path)["train"], "max_steps": 3})
    out, predictions = tmp_path / "student", tmp_path / "predictions.jsonl"
    stages.student(spec=spec, data_dir=str(data), teacher_outputs_dir=str(tmp_path), teacher_dir=str(path),
                   init_dir=None, ckpt_dir=str(tmp_path / "ckpt"), out_dir=str(out), predictions_path=str(predictions))
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 3 and summary["best_step"] in (1, 2, 3)
    rows = [json.loads(line) for line in predictions.open()]
    assert [r["id"] for r in rows] == [e["id"] for e in sources.examples("en_nl", data / "test.jsonl")]
    again = tmp_path / "again.jsonl"
    stages.outputs(task="en_nl", arch="seq2seq", model_dir=str(out), data_path=str(data / "test.jsonl"), prompt="",
                   gen=spec["generation"], max_source_length=32, out_path=str(again))
    assert again.read_text() == predictions.read_text()


def test_teacher_trains_in_bf16_and_runs_in_teacher_dtype(tmp_path, monkeypatch):
    """teacher.train.mixed_precision bf16 trains under CPU autocast; teacher.dtype reaches every stage that
    runs the teacher (its outputs, a student's loss), and auto stays float32 on the CPU."""
    from ketchup import models, runtime

    assert runtime.teacher_dtype("bfloat16") == torch.bfloat16 and runtime.teacher_dtype("float32") == torch.float32
    if not torch.cuda.is_available():
        assert runtime.teacher_dtype("auto") is None
    data, path, _ = _pretrained(tmp_path)
    teacher = tmp_path / "teacher"
    spec = _spec(path, train={**_spec(path)["train"], "mixed_precision": "bf16"})
    stages.teacher(spec=spec, data_dir=str(data), tokenizer_dir=str(path), ckpt_dir=str(tmp_path / "ckpt"),
                   out_dir=str(teacher))
    assert load_model("seq2seq", teacher).dtype == torch.float32  # fp32 master weights, saved as such
    loaded = []
    real = models.load_model
    monkeypatch.setattr(models, "load_model", lambda *a, **k: loaded.append(k.get("dtype")) or real(*a, **k))
    stages.outputs(task="en_nl", arch="seq2seq", model_dir=str(teacher), data_path=str(data / "train.jsonl"),
                   prompt="", gen=spec["generation"], max_source_length=32, out_path=str(tmp_path / "outputs" / "train.jsonl"),
                   teacher=True, teacher_dtype_setting="bfloat16")
    assert loaded == [torch.bfloat16] and (tmp_path / "outputs" / "train.jsonl").stat().st_size > 0
    student = _spec(path, method="kl", student="tiny", teacher_dtype="bfloat16")
    stages.student(spec=student, data_dir=str(data), teacher_outputs_dir=str(tmp_path / "outputs"),
                   teacher_dir=str(teacher), init_dir=None, ckpt_dir=str(tmp_path / "ckpt_kl"),
                   out_dir=str(tmp_path / "kl"), predictions_path=str(tmp_path / "kl.jsonl"))
    assert torch.bfloat16 in loaded[1:]  # the teacher; the student and its dev-best reload in float32
    assert load_model("seq2seq", tmp_path / "kl").dtype == torch.float32


def test_model_modules_import_with_the_gc_paused_and_leave_it_running():
    import gc

    from ketchup import runtime

    runtime.import_quietly(*runtime.MODEL_MODULES)
    assert gc.isenabled()
    with pytest.raises(ModuleNotFoundError):
        runtime.import_quietly("ketchup.no_such_module")
    assert gc.isenabled()
