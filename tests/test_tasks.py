"""Tasks as data (ketchup.tasks, docs/data.md 'Adding a task'): presets, the config's checks, local
CSV / JSONL / Parquet records read through ``fields``, and two tasks of one's own end to end."""

from __future__ import annotations

import csv
import json
import re
import shutil
import unicodedata
from pathlib import Path

import pandas as pd
import pytest
import sacrebleu
import yaml

from ketchup import config as kconfig, tasks
from ketchup.data import records, sources
from ketchup.io import DataError, read_jsonl

REPO_ROOT = Path(__file__).resolve().parents[1]
TEST_CONFIG = REPO_ROOT / "workflow" / "configs" / "test.yaml"
TINY = {"config": {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 1, "num_decoder_layers": 1, "num_heads": 4}}


def _config(task_name: str, block: dict, **top) -> dict:
    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    cfg["tasks"] = {task_name: block}
    cfg.update(top)
    return cfg


# --- presets and checks -------------------------------------------------------------------------


def test_the_paper_tasks_are_presets_and_any_key_can_be_replaced():
    xsum = tasks.resolve("xsum", {"source": "synthetic"})
    assert xsum["fields"] == {"source": "document", "reference": "summary"}
    assert xsum["metrics"] == ["rouge1", "rouge2", "rougeL"] and xsum["primary_metric"] == "rouge1"
    mine = tasks.resolve("de_en", {"preset": "en_nl", "source": "local", "fields": {"source": "de", "reference": "en"},
                                   "metrics": ["chrf", "bleu"]})
    assert mine["fields"] == {"source": "de", "reference": "en"}
    assert mine["primary_metric"] == "chrf"  # the first of the task's own metrics
    assert mine["hub_name"] == "Helsinki-NLP/europarl" and mine["title"] == "de_en"
    assert mine["description"] == tasks.DEFAULTS["description"]  # not "English to Dutch"
    assert tasks.resolve("en_nl", {})["title"] == "EN-NL"
    assert tasks.resolve("gsm8k", {"answer": "text"})["answer"] == "text"
    assert tasks.resolve("qa", {"fields": {"source": "q", "reference": "a"}, "metrics": ["accuracy"]})["answer"] == "text"
    assert tasks.resolve("qa", tasks.resolve("qa", {"metrics": ["bleu"]})) == tasks.resolve("qa", {"metrics": ["bleu"]})


def test_a_task_of_ones_own_validates(default_config):
    block = {"source": "local", "path": "data/qa", "format": "csv", "fields": {"source": "Q: {question}",
             "reference": "answer"}, "metrics": ["accuracy"], "answer": "text", "description": "answer it"}
    kconfig.validate(_config("my-qa_1", block))


@pytest.mark.parametrize("block, key, words", [
    ({"source": "local", "path": "d", "metrics": ["bleu"]}, "tasks.mine.fields", "no preset"),
    ({"source": "local", "path": "d", "fields": {"source": "a", "reference": "b"}}, "tasks.mine.metrics", "required"),
    ({"source": "local", "path": "d", "fields": {"source": "a", "reference": "b"}, "metrics": ["bleu"],
      "primary_metric": "chrf"}, "tasks.mine.primary_metric", "not one of the task's metrics"),
    ({"source": "local", "path": "d", "fields": {"source": "{a", "reference": "b"}, "metrics": ["bleu"]},
     "tasks.mine.fields.source", "neither a field name nor a template"),
    ({"source": "synthetic", "fields": {"source": "a", "reference": "b"}, "metrics": ["bleu"]},
     "tasks.mine.generator", "required for source synthetic"),
    ({"preset": "en_nl", "source": "synthetic", "calculator": True}, "tasks.mine.calculator", "answer_format: gsm8k"),
    ({"source": "local", "path": "d", "fields": {"source": "a", "reference": "b"}, "metrics": ["meteor"]},
     "tasks.mine.metrics.0", "is not one of"),
    ({"source": "local", "path": "d", "fields": {"source": "a", "reference": "b"}, "metrics": ["bleu"],
      "answer": "regex"}, "tasks.mine.answer", "is not one of"),
    ({"source": "local", "path": "d", "fields": {"source": "a"}, "metrics": ["bleu"]}, "tasks.mine.fields",
     "'reference' is a required property"),
])
def test_bad_task_blocks_name_their_key(block, key, words):
    with pytest.raises(kconfig.ConfigError) as err:
        kconfig.validate(_config("mine", block))
    assert f"config key '{key}'" in str(err.value) and words in str(err.value), str(err.value)


def test_task_names_are_free_but_path_safe():
    with pytest.raises(kconfig.ConfigError, match=r"tasks\.my task"):
        kconfig.validate(_config("my task", {"preset": "xsum", "source": "synthetic"}))
    kconfig.validate(_config("summaries", {"preset": "xsum", "source": "synthetic"}))


# --- records through fields ---------------------------------------------------------------------


def test_templates_and_nested_fields_make_the_example():
    tdef = tasks.resolve("qa", {"fields": {"source": "Q: {q.text} ({topic})", "reference": "a"}, "metrics": ["bleu"]})
    rec = {"id": 7, "q": {"text": "Who  wrote\nit?"}, "topic": "books", "a": " Ann "}
    records.check_record(tdef, rec, "f.jsonl:1")
    assert records.to_example(tdef, rec, "answer: ") == {"id": "7", "source": "answer: Q: Who wrote it? (books)",
                                                         "target": "Ann"}
    with pytest.raises(DataError, match=r"f.jsonl:3: missing field 'topic' that config key 'tasks.qa.fields.source'"):
        records.check_record(tdef, {"q": {"text": "x"}, "a": "y"}, "f.jsonl:3")
    assert records.has_empty_field(tdef, {"q": {"text": " "}, "topic": "t", "a": "y"})


def test_csv_and_parquet_records_with_their_lines(tmp_path):
    rows = [{"id": "a", "question": "Who?", "answer": "Ann"}, {"id": "b", "question": "Where,\nthen?", "answer": "Here"}]
    with (tmp_path / "train.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["id", "question", "answer"])
        writer.writeheader()
        writer.writerows(rows)
    got = sources.numbered_records(tmp_path / "train.csv", "csv")
    assert [r for _, r in got] == rows and [line for line, _ in got] == [2, 4]  # the second row spans lines 3-4
    assert sources.numbered_records(tmp_path / "train.csv", "csv", limit=1) == got[:1]
    (tmp_path / "bad.csv").write_text("id,question,answer\n1,Who?\n")
    with pytest.raises(DataError, match=r"bad.csv:2: 3 columns in the header"):
        sources.numbered_records(tmp_path / "bad.csv", "csv")
    pytest.importorskip("pyarrow", reason="Parquet needs pyarrow")
    pd.DataFrame(rows).to_parquet(tmp_path / "train.parquet")
    assert sources.numbered_records(tmp_path / "train.parquet", "parquet") == [(1, rows[0]), (2, rows[1])]


def test_local_parquet_task_builds(tmp_path):
    pytest.importorskip("pyarrow", reason="Parquet needs pyarrow")
    folder = tmp_path / "in"
    folder.mkdir()
    for split, n in (("train", 6), ("test", 3)):
        pd.DataFrame({"de": [f"Hund {i}" for i in range(n)], "en": [f"dog {i}" for i in range(n)]}).to_parquet(
            folder / f"{split}.parquet")
    spec = {"source": "local", "path": str(folder), "format": "parquet", "fields": {"source": "de", "reference": "en"},
            "metrics": ["chrf"], "n_dev": 2}
    sources.build("de_en", spec, 0, tmp_path / "out")
    assert len(read_jsonl(tmp_path / "out" / "train.jsonl")) == 4 and len(read_jsonl(tmp_path / "out" / "dev.jsonl")) == 2
    assert read_jsonl(tmp_path / "out" / "test.jsonl")[0] == {"de": "Hund 0", "en": "dog 0", "id": "de_en-test-0"}


# --- end to end -----------------------------------------------------------------------------------


def _normalised(text: str) -> str:
    """Exact match's normalisation, written again: NFKC, case folded, no punctuation, single spaces."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join("".join(c for c in text if not unicodedata.category(c).startswith("P")).split())


def _docs_block(heading: str) -> str:
    text = (REPO_ROOT / "docs" / "data.md").read_text(encoding="utf-8")
    section = text[text.index(heading):]
    return re.search(r"```yaml\n(.*?)```", section, re.S).group(1)


def test_docs_question_answering_task_from_csv_end_to_end(tmp_path):
    """docs/data.md's 'Adding a task' config, as written: a local CSV question-answer set scored by
    text exact match (its primary metric) and chrF."""
    from snakemake_runner import snakemake

    cfg = yaml.safe_load(_docs_block("## Adding a task"))
    work = tmp_path / "work"
    shutil.copytree(REPO_ROOT / cfg["tasks"]["add_words"]["path"], work / cfg["tasks"]["add_words"]["path"])
    config = tmp_path / "add_words.yaml"
    config.write_text(_docs_block("## Adding a task"))
    snakemake(work, config, "results/tables/main.csv", "results/tables/main.md", timeout=600)

    main = pd.read_csv(work / "results/tables/main.csv")
    assert set(main.task) == {"add_words"} and set(main.metric) == {"accuracy", "chrf"}
    for method in ["teacher", *cfg["methods"]]:
        pred = "teacher" if method == "teacher" else f"tiny/{method}/seed0"
        rows = read_jsonl(work / "results" / ("teacher_outputs/add_words/test.jsonl" if method == "teacher"
                                              else f"predictions/add_words/{pred}.jsonl"))
        metrics = json.loads((work / "results/metrics/add_words" / ("teacher.json" if method == "teacher"
                                                                     else f"{pred}.json")).read_text())
        assert set(metrics["metrics"]) == {"accuracy", "chrf"}
        hits = [100.0 * (_normalised(r["prediction"]) == _normalised(r["reference"])) for r in rows]
        assert metrics["per_example"] == {r["id"]: h for r, h in zip(rows, hits)}
        assert metrics["metrics"]["accuracy"] == pytest.approx(sum(hits) / len(hits))
        assert metrics["metrics"]["chrf"] == pytest.approx(
            sacrebleu.corpus_chrf([r["prediction"] for r in rows], [[r["reference"] for r in rows]]).score)
        cell = main[(main.method == method) & (main.metric == "accuracy")]["mean"].item()
        assert cell == pytest.approx(sum(hits) / len(hits), abs=1e-4)
    assert main[(main.method == "teacher") & (main.metric == "accuracy")]["mean"].item() > 50  # it learnt the task
    check = pd.read_csv(work / "results/tables/teacher_vs_untrained.csv")
    assert list(check.metric) == ["accuracy"]
    md = (work / "results/tables/main.md").read_text()
    assert "| Method | add_words (accuracy) |" in md


def test_translation_pair_of_ones_own_scored_by_chrf(tmp_path, jsonl_writer):
    """A local German-English pair with field names of one's own, a template, chrF primary; the
    analyses that read the primary metric take it."""
    from snakemake_runner import snakemake

    words = {"Hund": "dog", "Katze": "cat", "Haus": "house", "Baum": "tree", "Buch": "book", "Auto": "car"}
    adjs = {"groß": "big", "klein": "small", "alt": "old", "neu": "new"}
    pairs = [(f"{de}", f"{en}", a_de, a_en) for de, en in words.items() for a_de, a_en in adjs.items()]
    rows = [{"satz": {"de": f"Der {a_de} {de}."}, "english": f"The {a_en} {en}."} for de, en, a_de, a_en in pairs]
    folder = tmp_path / "work" / "data" / "de_en"
    jsonl_writer(folder / "train.jsonl", rows * 8)
    jsonl_writer(folder / "test.jsonl", rows[:12])
    block = {"source": "local", "path": "data/de_en", "fields": {"source": "{satz.de}", "reference": "english"},
             "metrics": ["chrf", "bleu"], "description": "translate German to English", "n_dev": 16,
             "prompt": "translate German to English: ", "k": 2, "max_source_length": 24, "max_target_length": 10}
    cfg = _config("de_en", block, students={"tiny": TINY}, methods=["prompted", "kl", "ketchup"])
    cfg["teacher"]["train"]["max_steps"] = 60
    cfg["train"]["max_steps"] = 10
    config = tmp_path / "de_en.yaml"
    config.write_text(yaml.safe_dump(cfg))
    work = tmp_path / "work"
    targets = ["results/tables/main.csv", "results/tables/main.md", "results/tables/significance.csv",
               "results/tables/student_size.csv"]
    snakemake(work, config, *targets, timeout=600)

    main = pd.read_csv(work / "results/tables/main.csv")
    assert set(main.metric) == {"chrf", "bleu"}
    rows = read_jsonl(work / "results/predictions/de_en/tiny/kl/seed0.jsonl")
    assert [r["source"] for r in rows[:2]] == ["translate German to English: Der groß Hund.",
                                               "translate German to English: Der klein Hund."]
    metrics = json.loads((work / "results/metrics/de_en/tiny/kl/seed0.json").read_text())
    assert set(metrics["metrics"]) == {"chrf", "bleu"}
    assert metrics["per_example"] == {
        r["id"]: pytest.approx(sacrebleu.sentence_chrf(r["prediction"], [r["reference"]]).score) for r in rows}
    sig = pd.read_csv(work / "results/tables/significance.csv")
    assert len(sig) and set(sig.metric) == {"chrf"}
    sizes = pd.read_csv(work / "results/tables/student_size.csv")
    assert set(sizes.metric) == {"chrf"}
    assert "| Method | de_en (chrF) |" in (work / "results/tables/main.md").read_text()


def test_misspelt_field_stops_the_dag_build(tmp_path):
    """A field the records lack (here a misspelt column) fails when the DAG is built, naming the file,
    the line and the config key, before any job runs."""
    from snakemake_runner import snakemake

    work = tmp_path / "work"
    shutil.copytree(REPO_ROOT / "docs/examples/add_words", work / "data/qa")
    block = {"source": "local", "path": "data/qa", "format": "csv",
             "fields": {"source": "{questoin}", "reference": "answer"}, "metrics": ["accuracy"]}
    config = tmp_path / "qa.yaml"
    config.write_text(yaml.safe_dump(_config("qa", block)))
    proc = snakemake(work, config, "-n", "results/tables/main.csv", check=False, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "data/qa/train.csv:2: missing field 'questoin' that config key 'tasks.qa.fields.source' reads" in out, out
    assert "Traceback" not in out, out
    assert not (work / "results").exists()


def test_the_judge_reads_each_tasks_description():
    from ketchup.judge import protocol

    assert protocol.describe_task("xsum") == tasks.PRESETS["xsum"]["description"]
    assert protocol.describe_task("mine") == tasks.DEFAULTS["description"]
    assert protocol.describe_task("mine", {"mine": "answer the question"}) == "answer the question"


def test_the_judge_jobs_get_the_tasks_description(tmp_path):
    """The judge rules pass each task's description (judge.task_descriptions replacing it)."""
    from snakemake_runner import snakemake

    block = {"preset": "xsum", "source": "synthetic", "description": "sum up a made-up news story"}
    judge = {"enabled": True, "base_url": "http://127.0.0.1:9/v1", "model": "m", "baseline": "sft",
             "task_descriptions": {"news2": "say what news2 is"}}
    cfg = _config("news", block, judge=judge)
    cfg["tasks"]["news2"] = {"preset": "xsum", "source": "synthetic"}
    config = tmp_path / "judge.yaml"
    config.write_text(yaml.safe_dump(cfg))
    target = "results/judge/{}/tiny/kl/seed0/scores.jsonl"
    proc = snakemake(tmp_path / "work", config, "-n", "-p", target.format("news"), target.format("news2"),
                     env={"OPENAI_API_KEY": "x", judge.get("api_key_env", "OPENAI_API_KEY"): "x"}, timeout=120)
    commands = [line for line in proc.stdout.splitlines() if "judge-score" in line]
    assert len(commands) == 2 and all("sum up a made-up news story" in c and "say what news2 is" in c
                                      for c in commands), proc.stdout[-3000:]
