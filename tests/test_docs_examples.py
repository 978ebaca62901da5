"""Every complete config example of README.md and docs/ runs end to end at a tiny scale, and its RL
rows do not collapse.

A *complete example* is a fenced ```yaml block whose top level has ``architecture:`` (a whole config)
or ``extends:`` (a config over another file: a block of the same page named
``NAME.yaml`` (```yaml NAME.yaml), else a file of the checkout, where the docs tell the reader to
save it). Every other yaml block is a fragment, which tests/test_docs.py validates block by
block. An example given in a new page is picked up with no change here.

Each example runs as written but for its scale (``tiny``): one seed, its first task and first student
size, small splits, lengths and step counts (every ``max_steps``, evaluation and checkpoint cadence
of ``train``, ``rl_train`` and ``method_overrides``),
methods cut to ``kl`` and, of the RL methods that share their optimiser settings, the first (the
settings are what is checked: docs/data.md's collapsed at one lr, all four alike), the judge off. Optimiser settings other than steps and batch sizes (the learning rates above all) stay
as written. What a test machine cannot have is replaced: a hub data set by the task's synthetic one,
a local data folder that is not in the checkout by one written with synthetic records in the hub
schema (data the checkout has, as a page's example reads it, keeps the example's sizes).
The teacher, the students' fixed environment and not under test, is always a tiny model built from
config and fine-tuned with one recipe (``TEACHER_TRAIN``); a student given by ``name_or_path`` (hub
or local) or cut from the teacher is cut from that teacher, all its layers, with a tokenizer trained
on the task: like a pretrained model, a trained start (a random one would learn nothing at a
pretrained model's lr).

Collapse: an RL method whose every number in ``main.csv`` (every metric of the task) is 0 collapsed;
docs/data.md's example did so at ``train.lr: 1.0e-3`` before the RL methods had their own defaults
(``rl_train``, docs/configuration.md). The KL row, which every RL method starts from, must not be all
zeros either, or the scale is too small to tell.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from conftest import REPO_ROOT
from snakemake_runner import snakemake
from test_docs import MARKDOWN, _blocks
from ketchup import config as kconfig
from ketchup import registry

TINY_MODEL = {
    "seq2seq": {"d_model": 64, "d_kv": 16, "d_ff": 256, "num_layers": 2, "num_decoder_layers": 1, "num_heads": 4,
                "dropout_rate": 0.0},
    "decoder": {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
                "num_key_value_heads": 2, "max_position_embeddings": 256, "tie_word_embeddings": True},
}
SPLITS = {"n_train": 320, "n_dev": 16, "n_test": 16}
LENGTHS = {"max_source_length": 64, "max_target_length": 32}
# The teacher's model and recipe: the fixed environment, not under test (test.yaml's recipe).
TEACHER_TRAIN = {"lr": 3.0e-3, "max_steps": 120, "batch_size": 32, "eval_every": 120, "checkpoint_every": 120,
                 "dev_eval_examples": 16}
# A student loaded or cut in the example: all of the tiny teacher's layers, a trained model to start
# from, as a pretrained one is (a random one would learn nothing at a pretrained model's lr).
CUT = {"seq2seq": {"encoder_layers": [0, 1], "decoder_layers": [0]}, "decoder": {"layers": [0, 1]}}
STUDENT_STEPS, RL_STEPS, PRETRAIN_STEPS = 40, 20, 10
BATCH = 16


def _resolve(config: dict[str, Any], named: dict[str, str]) -> dict[str, Any]:
    """``extends`` resolved against the page's named blocks (```yaml NAME.yaml) first, then the checkout."""
    if "extends" not in config:
        return config
    target = str(config["extends"])
    base = _resolve(yaml.safe_load(named[target]), named) if target in named else kconfig.read(REPO_ROOT / target)
    return kconfig.deep_update(base, {k: v for k, v in config.items() if k != "extends"})


def complete_examples() -> list[tuple[str, dict[str, Any]]]:
    """(where: 'docs/x.md, block N', the config with its extends resolved) of each complete example."""
    found = []
    for path in MARKDOWN:
        blocks = _blocks(path, "yaml")
        named = {info: body for info, body in blocks if info.endswith(".yaml")}
        for i, (_, body) in enumerate(blocks, 1):
            config = yaml.safe_load(body)
            if isinstance(config, dict) and ("architecture" in config or "extends" in config):
                found.append((f"{path.relative_to(REPO_ROOT)}, yaml block {i}", _resolve(config, named)))
    return found


def _shrink_optim(block: dict[str, Any], steps: int) -> dict[str, Any]:
    """An optimiser block at the tiny scale: steps, cadence and batch only; lr and the rest as written."""
    out = {k: v for k, v in block.items() if k != "epochs"}
    out.update(max_steps=min(block.get("max_steps") or steps, steps), eval_every=steps, checkpoint_every=steps,
               dev_eval_examples=SPLITS["n_dev"], batch_size=min(block.get("batch_size", BATCH), BATCH), grad_accum=1)
    return out


def _local_data(task: str, path: Path) -> None:
    """A local data folder in the task's hub schema, from its synthetic records."""
    from ketchup.data import synthetic

    if task not in synthetic.GENERATORS:
        raise AssertionError(f"no synthetic records for task {task!r}: ship its example's data folder in the "
                             "checkout, or teach tests/test_docs_examples.py (_local_data) to make it")
    path.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", SPLITS["n_train"] + SPLITS["n_dev"]), ("test", SPLITS["n_test"])):
        rows = synthetic.generate(task, split, n, seed=0)
        (path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def tiny(example: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """The example at the tiny scale (see the module's docstring); local data written under ``workdir``."""
    config = copy.deepcopy(example)
    arch = config["architecture"]
    config["seeds"] = config["seeds"][:1]
    task, spec = next(iter(config["tasks"].items()))
    spec = {**spec, **{k: min(spec.get(k, v), v) for k, v in LENGTHS.items()}}
    if spec["source"] == "local" and (REPO_ROOT / spec["path"]).is_dir():  # the checkout's data, sizes as written
        shutil.copytree(REPO_ROOT / spec["path"], workdir / spec["path"], dirs_exist_ok=True)
    else:
        spec.update(SPLITS)
        if spec["source"] == "hub":
            spec = {k: v for k, v in spec.items() if k not in ("hub_name", "hub_config")} | {"source": "synthetic"}
        elif spec["source"] == "local":
            _local_data(task, workdir / spec["path"])
    spec.pop("teacher_train", None)
    config["tasks"] = {task: spec}
    size, student = next(iter(config["students"].items()))
    built = lambda model: "config" in model and not {"name_or_path", "from_teacher"} & set(model)  # noqa: E731
    if not built(student):  # loaded or cut: cut from the tiny teacher
        student = {"from_teacher": CUT[arch]}
    if not (built(student) and built(config["teacher"]["model"])) or config["tokenizer"]["kind"] != "train":
        config["tokenizer"] = {"kind": "train", "vocab_size": 400}  # the tiny teacher's, trained on the task
    config["teacher"] = {**config["teacher"], "model": {"config": TINY_MODEL[arch]}, "train": TEACHER_TRAIN}
    if "pretrain" in student:
        student = {**student, "pretrain": {**student["pretrain"], "steps": PRETRAIN_STEPS, "eval_every": PRETRAIN_STEPS,
                                           "checkpoint_every": PRETRAIN_STEPS, "dev_examples": SPLITS["n_dev"]}}
    config["students"] = {size: student}
    config["teacher"].pop("finetune", None)
    # kl and, of the RL methods that train alike (the same optimiser settings), the first: the settings
    # are what collapses; an example without kl or RL methods runs its first method.
    rl, seen = [], []
    for method in (m for m in config["methods"] if registry.get(m).family == "rl"):
        if (settings := kconfig.optim_settings(config, method)) not in seen:
            rl.append(method)
            seen.append(settings)
    config["methods"] = [m for m in config["methods"] if m == "kl" or m in rl] or config["methods"][:1]
    config["train"] = _shrink_optim(config["train"], STUDENT_STEPS)
    rl = any(registry.get(m).family == "rl" for m in config["methods"])
    if rl or "rl_train" in config:
        config["rl_train"] = _shrink_optim(config.get("rl_train", {}), RL_STEPS)
    config["method_overrides"] = {m: _shrink_optim(o, RL_STEPS if registry.get(m).family == "rl" else STUDENT_STEPS)
                                  for m, o in config.get("method_overrides", {}).items() if m in config["methods"]}
    generation = config.get("generation", {})
    config["generation"] = {**generation, "max_new_tokens": min(generation.get("max_new_tokens", 32), 32)}
    config["judge"] = {**config.get("judge", {}), "enabled": False}
    config.pop("plan", None)
    kconfig.validate(config)
    return config


EXAMPLES = complete_examples()


def test_complete_examples_are_found():
    assert any(where.startswith("docs/data.md") for where, _ in EXAMPLES)
    assert len(EXAMPLES) >= 2


def test_tiny_keeps_the_examples_learning_rates(tmp_path):
    """tiny() changes steps, cadence and batch sizes only: every method keeps the lr the example gives
    it, through train, rl_train and method_overrides alike."""
    for i, (where, example) in enumerate(EXAMPLES):
        config = tiny(example, tmp_path / str(i))
        assert any(registry.get(m).family == "rl" for m in config["methods"]) or \
            not any(registry.get(m).family == "rl" for m in example["methods"]), where
        for method in config["methods"]:
            assert kconfig.optim_settings(config, method)["lr"] == kconfig.optim_settings(example, method)["lr"], where
            assert kconfig.optim_settings(config, method)["max_steps"] <= STUDENT_STEPS, where
        assert config["teacher"]["train"] == TEACHER_TRAIN and "finetune" not in config["teacher"]


@pytest.mark.slow
@pytest.mark.parametrize("where, example", EXAMPLES, ids=[w for w, _ in EXAMPLES])
def test_complete_example_runs_and_its_rl_rows_do_not_collapse(where, example, tmp_path):
    config = tiny(example, tmp_path)
    path = tmp_path / "example.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    snakemake(tmp_path, path, "results/tables/main.csv", timeout=1200)
    table = pd.read_csv(tmp_path / "results" / "tables" / "main.csv")
    rows = table[table["method"].isin(config["methods"])].groupby("method")["mean"]
    assert set(rows.groups) == set(config["methods"]), where
    if "kl" in config["methods"]:
        assert rows.get_group("kl").abs().sum() > 0, f"{where}: the KL row is all zeros at this scale; it tells nothing"
    collapsed = [m for m in config["methods"] if registry.get(m).family == "rl" and rows.get_group(m).abs().sum() == 0]
    assert not collapsed, f"{where}: the RL rows of {collapsed} collapsed to all zeros:\n{table.to_string()}"
