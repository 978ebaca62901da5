"""Task data: synthetic generators, the build stage (synthetic, local, hub), malformed inputs, the CLI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ketchup.data import records, sources, synthetic
from ketchup.io import DataError, read_jsonl

REPO_ROOT = Path(__file__).resolve().parents[1]
GSM8K_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"
TASKS = ["xsum", "en_nl", "gsm8k"]
SPLITS = ["train", "dev", "test"]
FINAL = re.compile(r"#### (-?[\d,]*\.?\d+)$")


def split_files(out: Path) -> list[Path]:
    return [out / f"{s}.jsonl" for s in SPLITS]


def assert_nothing_written(out: Path) -> None:
    """No split file, and no temporary left over from an atomic write."""
    leftovers = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert leftovers == [], leftovers


# --- synthetic generators -------------------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
def test_generator_is_deterministic(task):
    assert synthetic.generate(task, "train", 50, seed=3) == synthetic.generate(task, "train", 50, seed=3)


@pytest.mark.parametrize("task", TASKS)
def test_generator_differs_by_seed_and_split(task):
    base = synthetic.generate(task, "train", 50, seed=0)
    assert synthetic.generate(task, "train", 50, seed=1) != base
    assert synthetic.generate(task, "dev", 50, seed=0) != base
    assert synthetic.generate(task, "test", 50, seed=0) != synthetic.generate(task, "dev", 50, seed=0)


@pytest.mark.parametrize("task", TASKS)
def test_generated_records_fit_the_hub_schema(task):
    recs = synthetic.generate(task, "train", 300, seed=0)
    assert len(recs) == 300
    for i, rec in enumerate(recs):
        records.check_record(task, rec, f"record {i}")
    # Not degenerate: the outputs vary.
    key = {"xsum": "summary", "en_nl": "translation", "gsm8k": "answer"}[task]
    assert len({json.dumps(r[key]) for r in recs}) > 100


def test_gsm8k_answers_are_right():
    q_re = re.compile(r"^(\w+) has (\d+) (\w+)\. \1 buys (\d+) more \3\. Then \1 gives (\d+) \3 to (\w+)\. "
                      r"How many \3 does \1 have now\?$")
    calc_re = re.compile(r"<<(\d+)([+\-*/])(\d+)=(-?\d+)>>(-?\d+)")
    for rec in synthetic.generate("gsm8k", "test", 300, seed=5):
        m = q_re.match(rec["question"])
        assert m, rec["question"]
        a, b, c = int(m[2]), int(m[4]), int(m[5])
        final = FINAL.search(rec["answer"])
        assert final, rec["answer"]
        assert int(final[1]) == a + b - c
        assert int(final[1]) >= 1
        calcs = calc_re.findall(rec["answer"])
        assert len(calcs) == 2, rec["answer"]
        for x, op, y, result, shown in calcs:
            x, y, result = int(x), int(y), int(result)
            assert result == {"+": x + y, "-": x - y, "*": x * y, "/": x // y}[op], rec["answer"]
            assert int(shown) == result  # the text after the annotation repeats its result
        assert [(int(x), int(y)) for x, _, y, _, _ in calcs] == [(a, b), (a + b, c)]


def xsum_events(document: str) -> list[dict[str, str]]:
    """The event sentences of a synthetic xsum document, each parsed into its person's facts."""
    events = []
    for sentence in document.split("\n"):
        matches = [(doc, para) for doc, para in synthetic.EVENTS if doc in sentence]
        if not matches:
            continue
        assert len(matches) == 1, sentence
        words = set(sentence.rstrip(".").split())
        [name], [role], [place], [day] = (sorted(words & set(vocab)) for vocab in
                                          (synthetic.NAMES, synthetic.ROLES, synthetic.PLACES, synthetic.DAYS))
        doc, para = matches[0]
        events.append(dict(name=name, role=role, place=place, day=day, doc=doc, paraphrase=para, sentence=sentence))
    return events


def test_xsum_summary_is_the_salient_event_paraphrased_with_one_detail():
    details, salient_positions, mention_first = [], set(), 0
    for rec in synthetic.generate("xsum", "dev", 300, seed=2):
        doc, summary = rec["document"], rec["summary"]
        words = doc.replace(".", " ").split()
        events = xsum_events(doc)
        # Distractors: two or three events, each about a different person.
        assert 2 <= len(events) <= 3 and len({e["name"] for e in events}) == len(events), doc
        # Exactly one event's person and topic come back in another sentence: that event is the summary's.
        salient = [e for e in events if words.count(e["name"]) == 2]
        assert len(salient) == 1, doc
        (s,) = salient
        assert all(words.count(e["name"]) == 1 for e in events if e is not s), doc
        topic = s["doc"].split()[-1]
        assert words.count(topic) == 2 and all(words.count(e["doc"].split()[-1]) == 1 for e in events if e is not s)
        mention = next(x for x in doc.split("\n") if s["name"] in x and x != s["sentence"])
        assert topic in mention.replace(".", " ").split(), mention
        sentences = doc.split("\n")
        mention_first += sentences.index(mention) == 0
        assert sentences.index(mention) == 0 or sentences.index(mention) > max(sentences.index(e["sentence"])
                                                                             for e in events), doc
        salient_positions.add(events.index(s))
        # Paraphrase: the summary tells the salient event in other words than the document.
        assert summary.startswith(s["name"] + " "), (summary, doc)
        assert s["paraphrase"] in summary and s["paraphrase"] not in doc and s["doc"] not in summary
        # One detail (the salient person's role, place or day), which the document does not predict.
        kind = [k for k in ("role", "place", "day") if s[k] in summary.rstrip(".").split()]
        assert len(kind) == 1, (summary, s)
        assert summary == synthetic.DETAILS[kind[0]].format(event=s["paraphrase"], **s)
        details.append(kind[0])
        assert len(summary.split()) < len(words) / 3
    assert salient_positions == {0, 1, 2}  # position in the document is no shortcut
    assert 100 < mention_first < 200  # a lead before the events about half the time, else a reaction after
    assert all(60 < details.count(k) < 140 for k in synthetic.DETAILS), details


def test_xsum_lexicon_paraphrases_and_topics_are_distinct():
    docs = [doc for doc, _ in synthetic.EVENTS]
    topics = [doc.split()[-1] for doc in docs]
    assert len(set(topics)) == len(topics)
    for doc, para in synthetic.EVENTS:
        assert doc.split()[0] != para.split()[0], (doc, para)  # another verb
    # No other sentence of a document can repeat a topic and make a distractor look salient.
    other_text = " ".join(synthetic.FILLER + synthetic.SPOTS + synthetic.ADJS + synthetic.EVENT_SENTENCES
                          + synthetic.LEADS + synthetic.REACTIONS).replace(".", " ").split()
    assert not set(topics) & set(other_text)
    for topic in topics:
        assert sum(topic in doc.split() for doc in docs) == 1


def test_en_nl_word_order_and_lexicon():
    fronted = 0
    for rec in synthetic.generate("en_nl", "train", 400, seed=0):
        en = rec["translation"]["en"].rstrip(".").split()
        nl = rec["translation"]["nl"].rstrip(".").split()
        verbs = [w for w in en if w in synthetic.VERBS]
        assert len(verbs) == 1, en
        verb_nl = synthetic.VERBS[verbs[0]]
        if en[0] in synthetic.TIMES:
            fronted += 1
            # Time adverb first -> verb second (V2), before the subject.
            assert nl[0] == synthetic.TIMES[en[0]], (en, nl)
            assert nl[1] == verb_nl, (en, nl)
            assert nl[2].lower() in {"de", "het", "een"}, (en, nl)
        else:
            # Subject first: the verb follows the whole subject noun phrase, as in English.
            assert nl.index(verb_nl) == en.index(verbs[0]), (en, nl)
            assert nl[0].lower() in {"de", "het", "een"}, (en, nl)
        # Each Dutch noun carries its own article when definite.
        for i, word in enumerate(nl):
            for noun, (nl_noun, article) in synthetic.NOUNS.items():
                if word == nl_noun:
                    det = nl[i - 1] if nl[i - 1].lower() in {"de", "het", "een"} else nl[i - 2]
                    assert det.lower() in {article, "een"}, (en, nl)
    assert 80 < fronted < 250  # both orders occur (40% fronted)


def test_en_nl_adjective_inflection():
    # "een groot huis" (indefinite het-word) but "het grote huis", "een grote hond".
    for rec in synthetic.generate("en_nl", "train", 400, seed=1):
        nl = rec["translation"]["nl"].rstrip(".").lower().split()
        for i in range(len(nl) - 2):
            det, adj, noun = nl[i:i + 3]
            article = next((a for n, a in synthetic.NOUNS.values() if n == noun), None)
            if article is None or det not in {"de", "het", "een"}:
                continue
            bare = set(synthetic.ADJECTIVES.values())
            if adj in bare or adj.endswith("e"):
                if det == "een" and article == "het":
                    assert adj in bare, nl
                else:
                    assert adj not in bare, nl


# --- build: synthetic -----------------------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
def test_build_synthetic_sizes_ids_and_reruns(tmp_path, task):
    spec = {"source": "synthetic", "n_train": 40, "n_dev": 7, "n_test": 9}
    out = tmp_path / "a"
    sources.build(task, spec, 0, out)
    assert sorted(p.name for p in out.iterdir()) == ["dev.jsonl", "test.jsonl", "train.jsonl"]
    sizes = {s: len(read_jsonl(out / f"{s}.jsonl")) for s in SPLITS}
    assert sizes == {"train": 40, "dev": 7, "test": 9}
    ids = [r["id"] for s in SPLITS for r in read_jsonl(out / f"{s}.jsonl")]
    assert len(ids) == len(set(ids)) == 56
    for s in SPLITS:
        for i, rec in enumerate(read_jsonl(out / f"{s}.jsonl")):
            records.check_record(task, rec, f"{s}:{i}")
    # Reruns (into a fresh directory and over the old files) are byte-identical.
    first = [p.read_bytes() for p in split_files(out)]
    sources.build(task, spec, 0, tmp_path / "b")
    sources.build(task, spec, 0, out)
    assert [p.read_bytes() for p in split_files(tmp_path / "b")] == first
    assert [p.read_bytes() for p in split_files(out)] == first
    # Another data seed gives other data.
    sources.build(task, spec, 1, tmp_path / "c")
    assert (tmp_path / "c" / "train.jsonl").read_bytes() != first[0]


def test_build_synthetic_default_sizes(tmp_path):
    sources.build("gsm8k", {"source": "synthetic"}, 0, tmp_path)
    assert [len(read_jsonl(p)) for p in split_files(tmp_path)] == [2000, 200, 200]


# --- build: local JSONL in the hub schemas ---------------------------------------------------------


def hub_record(task: str, i: int, split: str = "train") -> dict:
    if task == "xsum":
        return {"document": f"Doc {split} {i}.\nIt has  two lines.", "summary": f"Summary {split} {i}.",
                "id": f"{split}{i:05d}"}
    if task == "en_nl":
        return {"translation": {"en": f"The dog {split} {i}.", "nl": f"De hond {split} {i}."}}
    return {"question": f"Q {split} {i}: what is {i} + 3?",
            "answer": f"{i} + 3 = <<{i}+3={i + 3}>>{i + 3}\n#### {i + 3}"}


def write_local(tmp_path: Path, jsonl_writer, task: str, n: int = 5) -> Path:
    d = tmp_path / "in" / task
    for split in SPLITS:
        jsonl_writer(d / f"{split}.jsonl", [hub_record(task, i, split) for i in range(n)])
    return d


@pytest.mark.parametrize("task", TASKS)
def test_local_source_builds_and_reads_back(tmp_path, jsonl_writer, task):
    d = write_local(tmp_path, jsonl_writer, task)
    out = tmp_path / "out"
    sources.build(task, {"source": "local", "path": str(d)}, 0, out)
    for split in SPLITS:
        recs = read_jsonl(out / f"{split}.jsonl")
        assert len(recs) == 5
        assert all(rec.items() >= hub_record(task, i, split).items() for i, rec in enumerate(recs))
    ids = [r["id"] for s in SPLITS for r in read_jsonl(out / f"{s}.jsonl")]
    assert len(set(ids)) == 15
    exs = sources.examples(task, out / "dev.jsonl", prompt="P: ")
    assert [set(e) for e in exs] == [{"id", "source", "target"}] * 5
    first = exs[0]
    if task == "xsum":
        assert first == {"id": "dev00000", "source": "P: Doc dev 0. It has two lines.", "target": "Summary dev 0."}
    elif task == "en_nl":
        assert first == {"id": "en_nl-dev-0", "source": "P: The dog dev 0.", "target": "De hond dev 0."}
    else:
        assert first == {"id": "gsm8k-dev-0", "source": "P: Q dev 0: what is 0 + 3?", "target": "0 + 3 = 3\n#### 3"}


def test_local_source_respects_sizes(tmp_path, jsonl_writer):
    d = write_local(tmp_path, jsonl_writer, "en_nl", n=6)
    sources.build("en_nl", {"source": "local", "path": str(d), "n_train": 4, "n_test": 2}, 0, tmp_path / "out")
    assert [len(read_jsonl(p)) for p in split_files(tmp_path / "out")] == [4, 6, 2]


def test_gsm8k_to_example_strips_calculator_annotations():
    rec = {"id": 1, "question": "  How   many?\n", "answer": "2 * 3 = <<2*3=6>>6 and 6+1=<<6+1=7>>7\n#### 7\n"}
    ex = records.to_example("gsm8k", rec, prompt="Q: ")
    assert ex == {"id": "1", "source": "Q: How many?", "target": "2 * 3 = 6 and 6+1=7\n#### 7"}


# --- malformed inputs -------------------------------------------------------------------------------

GOOD_GSM8K = {"question": "What is 1 + 1?", "answer": "1 + 1 = <<1+1=2>>2\n#### 2"}
MALFORMED = {
    # id: (task, bad line 3, fragment expected in the message)
    "invalid-json": ("gsm8k", '{"question": "q", "answer": "#### 1"', "not valid JSON"),
    "not-an-object": ("gsm8k", "[1, 2]", "JSON object"),
    "missing-field": ("xsum", {"document": "A document.", "id": "x3"}, "summary"),
    "missing-nested-field": ("en_nl", {"translation": {"en": "The cat."}}, "translation.nl"),
    "wrong-type": ("en_nl", {"translation": {"en": "The cat.", "nl": 5}}, "translation.nl"),
    "empty-field": ("xsum", {"document": "  ", "summary": "S.", "id": "x3"}, "document"),
    "gsm8k-no-final-answer": ("gsm8k", {"question": "q?", "answer": "It is 4."}, "####"),
    "gsm8k-no-number-after-marks": ("gsm8k", {"question": "q?", "answer": "It is 4.\n####"}, "####"),
    "not-utf8": ("gsm8k", b'{"question": "caf\xe9?", "answer": "#### 1"}', "UTF-8"),
}


@pytest.mark.parametrize("bad_split", ["train", "test"])
@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_local_data_names_file_and_line_and_writes_nothing(tmp_path, jsonl_writer, case, bad_split):
    task, bad_line, fragment = MALFORMED[case]
    d = write_local(tmp_path, jsonl_writer, task, n=4)
    good = [hub_record(task, i, bad_split) for i in range(4)]
    bad_path = jsonl_writer(d / f"{bad_split}.jsonl", good[:2] + [bad_line] + good[2:])
    out = tmp_path / "out"
    with pytest.raises(DataError) as info:
        sources.build(task, {"source": "local", "path": str(d)}, 0, out)
    message = str(info.value)
    assert f"{bad_path}:3" in message, message
    assert fragment in message, message
    assert_nothing_written(out)


def test_malformed_data_leaves_no_split_even_beside_old_outputs(tmp_path, jsonl_writer):
    # Split files from an earlier, good run are not half-replaced by a failing one.
    d = write_local(tmp_path, jsonl_writer, "gsm8k", n=4)
    out = tmp_path / "out"
    sources.build("gsm8k", {"source": "local", "path": str(d)}, 0, out)
    before = [p.read_bytes() for p in split_files(out)]
    jsonl_writer(d / "train.jsonl", [GOOD_GSM8K, {"question": "q", "answer": "no marks"}])
    jsonl_writer(d / "dev.jsonl", [GOOD_GSM8K])
    with pytest.raises(DataError, match=r"train\.jsonl:2"):
        sources.build("gsm8k", {"source": "local", "path": str(d)}, 0, out)
    assert [p.read_bytes() for p in split_files(out)] == before
    assert sorted(p.name for p in out.iterdir()) == ["dev.jsonl", "test.jsonl", "train.jsonl"]


def test_missing_or_empty_local_split(tmp_path, jsonl_writer):
    d = write_local(tmp_path, jsonl_writer, "gsm8k", n=3)
    (d / "dev.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match=r"dev\.jsonl: no records"):
        sources.build("gsm8k", {"source": "local", "path": str(d)}, 0, tmp_path / "out")
    (d / "dev.jsonl").unlink()  # optional: dev is then carved from train
    (d / "test.jsonl").unlink()
    with pytest.raises(DataError, match=r"test\.jsonl: file not found"):
        sources.build("gsm8k", {"source": "local", "path": str(d)}, 0, tmp_path / "out")
    assert_nothing_written(tmp_path / "out")


def test_examples_names_file_and_line(tmp_path, jsonl_writer):
    path = jsonl_writer(tmp_path / "test.jsonl", [GOOD_GSM8K, "", {"question": "q", "answer": 7}])
    with pytest.raises(DataError) as info:
        sources.examples("gsm8k", path)
    assert f"{path}:3" in str(info.value)  # blank lines still count


# --- the real GSM8K test file -----------------------------------------------------------------------


def test_real_gsm8k_loads_as_a_local_task(tmp_path):
    src = GSM8K_DIR / "test.jsonl"
    if not src.exists():
        pytest.skip(f"real GSM8K data not found at {src}")
    lines = src.read_text(encoding="utf-8").splitlines()
    d = tmp_path / "gsm8k"
    d.mkdir()
    (d / "train.jsonl").write_text("\n".join(lines[:1000]) + "\n", encoding="utf-8")
    (d / "dev.jsonl").write_text("\n".join(lines[1000:1100]) + "\n", encoding="utf-8")
    (d / "test.jsonl").write_text("\n".join(lines[1100:]) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    sources.build("gsm8k", {"source": "local", "path": str(d)}, 0, out)
    total = 0
    for split in SPLITS:
        exs = sources.examples("gsm8k", out / f"{split}.jsonl")
        total += len(exs)
        for ex in exs:
            assert "<<" not in ex["target"] and ">>" not in ex["target"], ex
            assert FINAL.search(ex["target"]), ex
            assert ex["source"] and "\n" not in ex["source"]
    assert total == len(lines) == 1319


# --- the hub loader, offline --------------------------------------------------------------------------


@pytest.fixture
def fake_hub(monkeypatch):
    """Replace datasets.load_dataset by an in-memory DatasetDict per (name, config); record the calls."""
    datasets = pytest.importorskip("datasets")
    calls = []
    data = {
        ("EdinburghNLP/xsum", None): {
            "train": [hub_record("xsum", i, "train") for i in range(20)],
            "validation": [hub_record("xsum", i, "validation") for i in range(5)],
            "test": [hub_record("xsum", i, "test") for i in range(6)],
        },
        ("Helsinki-NLP/europarl", "en-nl"): {"train": [hub_record("en_nl", i) for i in range(60)]},
        ("openai/gsm8k", "main"): {
            "train": [hub_record("gsm8k", i, "train") for i in range(30)],
            "test": [hub_record("gsm8k", i, "test") for i in range(8)],
        },
    }

    def load_dataset(path, name=None, *args, **kwargs):
        calls.append((path, name))
        splits = data[(path, name)]
        return datasets.DatasetDict({s: datasets.Dataset.from_list(rows) for s, rows in splits.items()})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls, data


def _build_hub(task, spec, seed, out):
    sources.build(task, {"source": "hub", **spec}, seed, out)
    return {s: read_jsonl(out / f"{s}.jsonl") for s in SPLITS}


def _strip_ids(recs):
    return [{k: v for k, v in r.items() if k != "id"} for r in recs]


def test_hub_xsum_uses_its_three_splits(tmp_path, fake_hub):
    calls, data = fake_hub
    got = _build_hub("xsum", {}, 0, tmp_path)
    assert calls == [("EdinburghNLP/xsum", None)]
    hub = data[("EdinburghNLP/xsum", None)]
    assert got == {"train": hub["train"], "dev": hub["validation"], "test": hub["test"]}


def test_hub_europarl_carves_seeded_dev_and_test(tmp_path, fake_hub):
    calls, data = fake_hub
    spec = {"n_dev": 5, "n_test": 7}
    got = _build_hub("en_nl", spec, 0, tmp_path / "a")
    assert calls == [("Helsinki-NLP/europarl", "en-nl")]
    assert [len(got[s]) for s in SPLITS] == [48, 5, 7]
    texts = {s: [r["translation"]["en"] for r in got[s]] for s in SPLITS}
    assert not set(texts["dev"]) & set(texts["test"])
    assert not (set(texts["dev"]) | set(texts["test"])) & set(texts["train"])
    assert sorted(sum(texts.values(), [])) == sorted(r["translation"]["en"] for r in data[calls[0]]["train"])
    ids = [r["id"] for s in SPLITS for r in got[s]]
    assert len(set(ids)) == 60
    # Deterministic for a seed (byte-identical files), different for another seed.
    again = tmp_path / "b"
    _build_hub("en_nl", spec, 0, again)
    assert [p.read_bytes() for p in split_files(again)] == [p.read_bytes() for p in split_files(tmp_path / "a")]
    other = _build_hub("en_nl", spec, 1, tmp_path / "c")
    assert other["dev"] != got["dev"]
    # n_train truncates what is left after dev/test are taken.
    small = _build_hub("en_nl", {**spec, "n_train": 10}, 0, tmp_path / "d")
    assert small["train"] == got["train"][:10] and small["dev"] == got["dev"]


def test_hub_gsm8k_carves_dev_from_train(tmp_path, fake_hub):
    calls, data = fake_hub
    got = _build_hub("gsm8k", {"n_dev": 6}, 0, tmp_path / "a")
    assert calls == [("openai/gsm8k", "main")]
    hub = data[("openai/gsm8k", "main")]
    assert _strip_ids(got["test"]) == hub["test"]
    assert len(got["dev"]) == 6 and len(got["train"]) == 24
    questions = {s: [r["question"] for r in got[s]] for s in ("train", "dev")}
    assert not set(questions["dev"]) & set(questions["train"])
    assert sorted(questions["train"] + questions["dev"]) == sorted(r["question"] for r in hub["train"])
    assert _build_hub("gsm8k", {"n_dev": 6}, 0, tmp_path / "b") == got
    ids = [r["id"] for s in SPLITS for r in got[s]]
    assert len(set(ids)) == 38
    # The examples drop calculator annotations, as for local data.
    assert all("<<" not in ex["target"] for ex in sources.examples("gsm8k", tmp_path / "a" / "train.jsonl"))


def test_hub_name_and_config_can_be_overridden(fake_hub, tmp_path):
    calls, data = fake_hub
    data[("me/gsm8k-copy", "socratic")] = data[("openai/gsm8k", "main")]
    _build_hub("gsm8k", {"hub_name": "me/gsm8k-copy", "hub_config": "socratic", "n_dev": 6}, 0, tmp_path)
    assert calls == [("me/gsm8k-copy", "socratic")]


def test_hub_malformed_record_writes_nothing(fake_hub, tmp_path):
    calls, data = fake_hub
    data[("openai/gsm8k", "main")]["test"][3] = {"question": "q?", "answer": "no final answer"}
    with pytest.raises(DataError, match=r"openai/gsm8k\[test\] record 3"):
        _build_hub("gsm8k", {"n_dev": 6}, 0, tmp_path / "out")
    assert_nothing_written(tmp_path / "out")


# --- the CLI ---------------------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT / "src"),
                                                                        os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "ketchup", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_cli_data_reports_file_and_line_without_traceback(tmp_path, jsonl_writer):
    d = write_local(tmp_path, jsonl_writer, "gsm8k", n=4)
    bad = jsonl_writer(d / "dev.jsonl", [GOOD_GSM8K, GOOD_GSM8K, '{"question": "q", "answer": '])
    out = tmp_path / "out"
    proc = _cli("data", "--task", "gsm8k", "--spec", json.dumps({"source": "local", "path": str(d)}),
                "--out", str(out))
    assert proc.returncode == 2, proc.stderr
    assert f"{bad}:3" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert_nothing_written(out)


def test_cli_data_rejects_a_spec_that_is_not_json(tmp_path):
    proc = _cli("data", "--task", "gsm8k", "--spec", "{source: local", "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert "--spec" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_hub_drops_pairs_with_an_empty_side(fake_hub, tmp_path, caplog):
    """Europarl has empty sentences; they are dropped (and counted in the log), not fatal."""
    calls, data = fake_hub
    rows = data[("Helsinki-NLP/europarl", "en-nl")]["train"]
    rows[3]["translation"]["nl"] = ""
    rows[10]["translation"]["en"] = "   "
    with caplog.at_level("WARNING"):
        got = _build_hub("en_nl", {"n_dev": 5, "n_test": 7}, 0, tmp_path / "a")
    assert [len(got[s]) for s in SPLITS] == [46, 5, 7]
    assert all(r["translation"]["en"].strip() and r["translation"]["nl"].strip() for s in SPLITS for r in got[s])
    assert "dropped 2 of 60" in caplog.text


# --- nothing silently lost: unique ids, checked sizes, local files as inputs (issue 10) ---------------


def test_duplicate_local_ids_name_the_file_and_both_lines(tmp_path, jsonl_writer):
    d = write_local(tmp_path, jsonl_writer, "xsum", n=4)
    rows = [hub_record("xsum", i, "test") for i in range(4)]
    rows[3]["id"] = rows[1]["id"]  # lines 2 and 4 share an id
    bad = jsonl_writer(d / "test.jsonl", rows)
    out = tmp_path / "out"
    with pytest.raises(DataError) as info:
        sources.build("xsum", {"source": "local", "path": str(d)}, 0, out)
    message = str(info.value)
    assert f"{bad}:4" in message and f"{bad}:2" in message and repr(rows[1]["id"]) in message, message
    assert_nothing_written(out)


def test_duplicate_ids_compare_as_written(tmp_path, jsonl_writer):
    # A number and its string are one id in the examples; an explicit id can hit an assigned one.
    d = write_local(tmp_path, jsonl_writer, "gsm8k", n=3)
    bad = jsonl_writer(d / "train.jsonl", [{**GOOD_GSM8K, "id": 7}, GOOD_GSM8K, {**GOOD_GSM8K, "id": "7"}])
    with pytest.raises(DataError, match=re.escape(f"{bad}:3: duplicate example id '7', already used at {bad}:1")):
        sources.build("gsm8k", {"source": "local", "path": str(d)}, 0, tmp_path / "out")
    bad = jsonl_writer(d / "train.jsonl", [GOOD_GSM8K, {**GOOD_GSM8K, "id": "gsm8k-train-0"}])
    with pytest.raises(DataError, match=re.escape(f"{bad}:2: duplicate example id 'gsm8k-train-0'")):
        sources.build("gsm8k", {"source": "local", "path": str(d)}, 0, tmp_path / "out")
    assert_nothing_written(tmp_path / "out")


def test_duplicate_hub_ids_are_an_error(fake_hub, tmp_path):
    calls, data = fake_hub
    data[("EdinburghNLP/xsum", None)]["test"][4]["id"] = data[("EdinburghNLP/xsum", None)]["test"][1]["id"]
    with pytest.raises(DataError, match=re.escape("hub:EdinburghNLP/xsum[test] record 4: duplicate example id "
                                                  "'test00001', already used at hub:EdinburghNLP/xsum[test] record 1")):
        _build_hub("xsum", {}, 0, tmp_path / "out")
    assert_nothing_written(tmp_path / "out")


@pytest.mark.parametrize("task", TASKS)
def test_synthetic_ids_unique_in_every_split_at_default_sizes(tmp_path, task):
    sources.build(task, {"source": "synthetic"}, 3, tmp_path)
    for path in split_files(tmp_path):
        ids = [str(r["id"]) for r in read_jsonl(path)]
        assert len(ids) == len(set(ids)) > 0


@pytest.mark.parametrize("split", SPLITS)
def test_local_size_larger_than_the_data_is_an_error(tmp_path, jsonl_writer, split):
    d = write_local(tmp_path, jsonl_writer, "en_nl", n=6)
    with pytest.raises(DataError) as info:
        sources.build("en_nl", {"source": "local", "path": str(d), f"n_{split}": 7}, 0, tmp_path / "out")
    message = str(info.value)
    assert f"tasks.en_nl.n_{split}" in message and "only 6" in message and str(d / f"{split}.jsonl") in message, message
    assert "'all'" in message
    assert_nothing_written(tmp_path / "out")
    # 'all' keeps every record, as does leaving the key out; the exact count is fine.
    sources.build("en_nl", {"source": "local", "path": str(d), f"n_{split}": "all"}, 0, tmp_path / "a")
    sources.build("en_nl", {"source": "local", "path": str(d), f"n_{split}": 6}, 0, tmp_path / "b")
    for out in ("a", "b"):
        assert [len(read_jsonl(p)) for p in split_files(tmp_path / out)] == [6, 6, 6]


def test_local_without_dev_carves_a_checked_seeded_slice(tmp_path, jsonl_writer):
    d = write_local(tmp_path, jsonl_writer, "gsm8k", n=10)
    (d / "dev.jsonl").unlink()
    spec = {"source": "local", "path": str(d), "n_dev": 3}
    sources.build("gsm8k", spec, 0, tmp_path / "a")
    got = {s: read_jsonl(tmp_path / "a" / f"{s}.jsonl") for s in SPLITS}
    assert [len(got[s]) for s in SPLITS] == [7, 3, 10]
    questions = {s: {r["question"] for r in got[s]} for s in ("train", "dev")}
    assert not questions["train"] & questions["dev"]
    assert questions["train"] | questions["dev"] == {hub_record("gsm8k", i)["question"] for i in range(10)}
    sources.build("gsm8k", spec, 0, tmp_path / "b")
    assert [p.read_bytes() for p in split_files(tmp_path / "b")] == [p.read_bytes() for p in split_files(tmp_path / "a")]
    with pytest.raises(DataError, match=r"tasks\.gsm8k\.n_dev' = 10 .* only 10 records"):  # nothing left for train
        sources.build("gsm8k", {**spec, "n_dev": 10}, 0, tmp_path / "c")
    with pytest.raises(DataError, match=r"tasks\.gsm8k\.n_dev' = 500 \(given or default\)"):
        sources.build("gsm8k", {"source": "local", "path": str(d)}, 0, tmp_path / "c")
    with pytest.raises(DataError, match=r"tasks\.gsm8k\.n_dev': 'all' is not possible"):
        sources.build("gsm8k", {**spec, "n_dev": "all"}, 0, tmp_path / "c")
    with pytest.raises(DataError, match=r"tasks\.gsm8k\.n_train': asks for 8 records but .* has only 7"):
        sources.build("gsm8k", {**spec, "n_train": 8}, 0, tmp_path / "c")
    assert_nothing_written(tmp_path / "c")


def test_hub_sizes_are_checked(fake_hub, tmp_path):
    with pytest.raises(DataError, match=r"tasks\.xsum\.n_test': asks for 7 records but hub:EdinburghNLP/xsum\[test\] "
                                        r"has only 6"):
        _build_hub("xsum", {"n_test": 7}, 0, tmp_path / "out")
    with pytest.raises(DataError, match=r"tasks\.en_nl\.n_dev \+ tasks\.en_nl\.n_test' = 60 .* only 60 records"):
        _build_hub("en_nl", {"n_dev": 30, "n_test": 30}, 0, tmp_path / "out")
    with pytest.raises(DataError, match=r"tasks\.en_nl\.n_train': asks for 49 records .* has only 48"):
        _build_hub("en_nl", {"n_dev": 5, "n_test": 7, "n_train": 49}, 0, tmp_path / "out")
    calls, _ = fake_hub
    n_calls = len(calls)
    with pytest.raises(DataError, match=r"tasks\.gsm8k\.n_dev': 'all' is not possible"):
        _build_hub("gsm8k", {"n_dev": "all"}, 0, tmp_path / "out")
    assert len(calls) == n_calls  # found before the download
    assert_nothing_written(tmp_path / "out")
    got = _build_hub("xsum", {"n_train": "all", "n_test": 6}, 0, tmp_path / "ok")
    assert [len(got[s]) for s in SPLITS] == [20, 5, 6]


def test_local_split_files_are_checked_and_listed(tmp_path, jsonl_writer):
    d = write_local(tmp_path, jsonl_writer, "gsm8k", n=3)
    spec = {"source": "local", "path": str(d)}
    assert sources.local_split_files("gsm8k", spec) == split_files(d)
    (d / "dev.jsonl").unlink()  # optional
    assert sources.local_split_files("gsm8k", spec) == [d / "train.jsonl", d / "test.jsonl"]
    (d / "test.jsonl").unlink()
    with pytest.raises(DataError, match=re.escape(f"config key 'tasks.gsm8k.path': {d / 'test.jsonl'} not found")):
        sources.local_split_files("gsm8k", spec)
    with pytest.raises(DataError, match=re.escape(f"config key 'tasks.gsm8k.path': {tmp_path / 'nope'} is not a directory")):
        sources.local_split_files("gsm8k", {"source": "local", "path": str(tmp_path / "nope")})


def _local_config(tmp_path: Path, path: str) -> Path:
    import yaml

    cfg = yaml.safe_load((REPO_ROOT / "workflow" / "configs" / "test.yaml").read_text())
    cfg["tasks"] = {"gsm8k": {"source": "local", "path": path, "max_source_length": 32, "max_target_length": 20}}
    out = tmp_path / "config.yaml"
    out.write_text(yaml.safe_dump(cfg))
    return out


def test_missing_local_folder_stops_the_dag_build(tmp_path):
    from snakemake_runner import snakemake

    work = tmp_path / "work"
    work.mkdir()
    proc = snakemake(work, _local_config(tmp_path, "data/mine"), "-n", "results/data/gsm8k/train.jsonl",
                     check=False, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "tasks.gsm8k.path" in out and "data/mine" in out and "not a directory" in out, out
    assert "Traceback" not in out, out
    assert not (work / "results").exists()


def test_edited_local_file_reruns_the_data_rule(tmp_path, jsonl_writer):
    from snakemake_runner import snakemake

    work = tmp_path / "work"
    d = write_local(work, jsonl_writer, "gsm8k", n=4)
    config = _local_config(tmp_path, str(d.relative_to(work)))  # relative to the working directory
    target = "results/data/gsm8k/test.jsonl"
    snakemake(work, config, target, timeout=180)
    assert len(read_jsonl(work / target)) == 4
    assert "Nothing to be done" in snakemake(work, config, "-n", target, timeout=120).stdout
    rows = [hub_record("gsm8k", i, "test") for i in range(5)]
    jsonl_writer(d / "test.jsonl", rows)
    for out in (work / "results/data/gsm8k").glob("*.jsonl"):  # outputs older than the edit, even on coarse
        os.utime(out, (os.path.getmtime(d / "test.jsonl") - 10,) * 2)  # clocks (an input in the future is a skew error)
    snakemake(work, config, target, timeout=180)
    assert len(read_jsonl(work / target)) == 5
