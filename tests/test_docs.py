"""The documentation holds together: README.md and docs/ link only to what exists, nothing in the
repository cites a file outside it, and the facts the pages show as examples or numbers agree with
the code and data they describe."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO_ROOT
from ketchup import config as kconfig, tasks
from ketchup.analysis.paper import paper_numbers
from ketchup.calculator import annotate
from ketchup.data import records

DOCS = REPO_ROOT / "docs"
MARKDOWN = [REPO_ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]

# The quick start's two commands, which CI (.ci/run) and the contributors' hook look for verbatim.
SETUP = ("python3 -m venv .venv && . .venv/bin/activate && pip install --require-hashes -r envs/lock/cpu.txt && "
         "pip install --no-deps --no-build-isolation -e . && ")
README_COMMANDS = (SETUP + "snakemake --cores 2 results/tables/main.csv", SETUP + "python -m pytest -q")

_FENCE = re.compile(r"^(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_CODE_SPAN = re.compile(r"(`+)(?:.|\n)*?\1")


# --- markdown helpers ------------------------------------------------------------------------------


def _prose(text: str) -> str:
    """The text with fenced code blocks blanked (lines kept, so positions stay meaningful)."""
    out, fenced = [], False
    for line in text.split("\n"):
        if _FENCE.match(line.lstrip()):
            fenced = not fenced
            out.append("")
        else:
            out.append("" if fenced else line)
    return "\n".join(out)


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: markdown links reduced to their text, lowercased, every
    character but letters, digits, '_', '-' and spaces dropped, spaces turned into '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a markdown file, repeated headings numbered as GitHub does (-1, -2...)."""
    seen: dict[str, int] = {}
    out = set()
    for line in _prose(path.read_text(encoding="utf-8")).split("\n"):
        if match := _HEADING.match(line):
            slug = github_slug(match.group(2))
            out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return out


def relative_links(path: Path) -> list[str]:
    """Link targets of a markdown file that are not URLs: file paths, with or without #anchor."""
    text = _CODE_SPAN.sub("", _prose(path.read_text(encoding="utf-8")))
    targets = [m.group(1) for m in _LINK.finditer(text)]
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.IGNORECASE)]


def broken_links(path: Path, root: Path = REPO_ROOT) -> list[str]:
    """The relative links of ``path`` that name no file of the repository ``root``, or no heading of it."""
    bad = []
    for target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path.resolve()
        if not resolved.is_relative_to(root.resolve()):
            bad.append(f"{target}: outside the repository")
        elif not resolved.exists():
            bad.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            bad.append(f"{target}: no heading '#{anchor}' in {resolved.relative_to(root.resolve())}")
        elif anchor and resolved.suffix != ".md":
            bad.append(f"{target}: an anchor into a file that is not markdown")
    return bad


def _blocks(path: Path, language: str) -> list[tuple[str, str]]:
    """(info string after the language, body) of each fenced block whose language is ``language``."""
    out, lines, info, body = [], path.read_text(encoding="utf-8").split("\n"), None, []
    for line in lines:
        if info is None:
            if match := re.match(rf"^```{re.escape(language)}(?:\s+(.*))?$", line.strip()):
                info, body = (match.group(1) or "").strip(), []
        elif line.strip() == "```":
            out.append((info, "\n".join(body)))
            info = None
        else:
            body.append(line)
    return out


# --- citations of files outside the repository -------------------------------------------------

# The design notes the project started from live outside the repository: nothing may cite them.
_OUTSIDE = [
    (re.compile("DESIGN" + r"\.md", re.IGNORECASE), "cites the design notes, which are not in the repository"),
    (re.compile(r"(?<![\w.~/-])/" + "work/"), "an absolute path of the machine it was written on"),
    # The one place outside the checkout the project reads is the folder of the published GSM8K files
    # beside it (docs/data.md says how to fill it); any other path into that folder is a citation.
    (re.compile(r"\.\./" + r"shared(?!/data/gsm8k\b)"), "a path outside the repository"),
]


def outside_citations(text: str) -> list[str]:
    """Each citation of a file outside the repository in ``text``, as 'line N: why: the line'."""
    found = []
    for lineno, line in enumerate(text.split("\n"), 1):
        for pattern, why in _OUTSIDE:
            if pattern.search(line):
                found.append(f"line {lineno}: {why}: {line.strip()[:120]}")
    return found


def _tracked_text_files() -> list[Path]:
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True).stdout
        names = [n for n in listed.decode().split("\0") if n]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (e.g. an sdist): every file
        skip = {".git", "results", ".snakemake", ".venv", "venv", "__pycache__", ".pytest_cache"}
        names = [str(p.relative_to(REPO_ROOT)) for p in REPO_ROOT.rglob("*")
                 if p.is_file() and not skip & set(p.relative_to(REPO_ROOT).parts)]
    files = []
    for name in names:
        path = REPO_ROOT / name
        if not path.is_file():  # deleted in the working tree, not yet committed
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        files.append(path)
    return files


# --- tests ---------------------------------------------------------------------------------------


def test_markdown_files_are_found():
    assert REPO_ROOT / "README.md" in MARKDOWN and len(MARKDOWN) > 5


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_relative_link_resolves(path):
    assert broken_links(path) == []


def test_link_check_catches_bad_links(tmp_path):
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "other.md").write_text("# Other\n\n## A section\n\n## A section\n", encoding="utf-8")
    page = root / "README.md"
    page.write_text("# A page\n\n## Its section\n\n"
                    "[ok](#its-section) [bad anchor](#no-such-section) `[in code](missing.md)`\n"
                    "```\n[in a block](missing.md)\n```\n"
                    "[missing](missing.md) [url](https://example.org/x.md) [mail](mailto:a@b.c)\n"
                    "[ok](docs/other.md#a-section-1) [bad](docs/other.md#a-section-2) [out](../x.md)\n"
                    "[wrapped\nlink text](docs/gone.md)\n", encoding="utf-8")
    (tmp_path / "x.md").write_text("# Outside\n", encoding="utf-8")
    assert broken_links(page, root) == ["#no-such-section: no heading '#no-such-section' in README.md",
                                        "missing.md: no such file",
                                        "docs/other.md#a-section-2: no heading '#a-section-2' in docs/other.md",
                                        "../x.md: outside the repository",
                                        "docs/gone.md: no such file"]


def test_github_slugs():
    assert github_slug("How the default's RL settings were chosen") == "how-the-defaults-rl-settings-were-chosen"
    assert github_slug("Pretraining a student: `students.<size>.pretrain`") == "pretraining-a-student-studentssizepretrain"
    assert github_slug("Sizes: `n_train`, `n_dev`, `n_test`") == "sizes-n_train-n_dev-n_test"
    assert github_slug("Encoder-decoder: Flan-T5-XL -> T5-base") == "encoder-decoder-flan-t5-xl---t5-base"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(REPO_ROOT / t.partition("#")[0]).resolve() for t in relative_links(REPO_ROOT / "README.md")}
    assert [p.name for p in DOCS.rglob("*.md") if p.resolve() not in linked] == []


def test_readme_keeps_the_setup_commands():
    lines = (REPO_ROOT / "README.md").read_text(encoding="utf-8").split("\n")
    for command in README_COMMANDS:
        assert command in lines


def test_nothing_cites_a_file_outside_the_repository():
    files = _tracked_text_files()
    assert REPO_ROOT / "README.md" in files and REPO_ROOT / "tests" / "conftest.py" in files
    found = {str(p.relative_to(REPO_ROOT)): hits for p in files if (hits := outside_citations(p.read_text("utf-8")))}
    assert found == {}


def test_outside_citation_check_catches_each_kind():
    assert outside_citations("see DESIGN" + ".md section 2") and outside_citations("(design" + ".md)")
    assert outside_citations("path: /" + "work/shared/data")
    assert outside_citations("../" + "shared/notes.txt") and outside_citations("in ../" + "shared.")
    assert outside_citations("../" + "shared/data/gsm8k_v2") and outside_citations("../" + "shared/data")
    assert outside_citations("GSM8K from ../" + "shared/data/gsm8k (dev a seeded slice)") == []
    assert outside_citations("https://example.org/work/x and docs/math.md") == []


def test_paper_numbers_in_docs_match_the_data_file():
    """docs/math.md's two tables are paper_numbers.csv, value for value, and name every row of it."""
    rows = []
    text = (DOCS / "math.md").read_text(encoding="utf-8")
    for setting, heading in (("t5", "### Encoder-decoder"), ("qwen", "### Decoder-only")):
        lines = text[text.index(heading):].split("\n")
        start = next(i for i, line in enumerate(lines) if line.startswith("|"))
        end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
        table = [[c.strip() for c in line.strip("|").split("|")] for line in lines[start:end]]
        assert table[0] == ["method", "XSum", "EN-NL", "GSM8K"]
        for cells in table[2:]:
            method = cells[0].replace(" (best K)", "")
            for task, value in zip(("xsum", "en_nl", "gsm8k"), cells[1:]):
                rows.append((setting, task, method, float(value)))
    documented = pd.DataFrame(rows, columns=["setting", "task", "method", "value"])
    data = paper_numbers()[["setting", "task", "method", "value"]]
    key = ["setting", "task", "method"]
    merged = data.merge(documented, on=key, how="outer", suffixes=("_csv", "_docs"), indicator=True)
    assert (merged["_merge"] == "both").all(), merged[merged["_merge"] != "both"]
    assert (merged["value_csv"] == merged["value_docs"]).all()
    best_k = {"t5": "Best K: 2 / 4 / 8", "qwen": "Best K: 2 / 2 / 16"}
    for setting, phrase in best_k.items():
        ks = paper_numbers().query("setting == @setting and method == 'ketchup'").set_index("task")["k"]
        assert phrase == "Best K: " + " / ".join(str(ks[t]) for t in ("xsum", "en_nl", "gsm8k")) and phrase in text


def test_record_examples_pass_the_record_checks():
    """docs/data.md shows one record per task (a block marked ```json TASK), and each passes the checks
    every data source's records pass; every task has one."""
    shown = {}
    for info, body in _blocks(DOCS / "data.md", "json"):
        record = json.loads(body)
        records.check_record(info, record, f"docs/data.md ({info})")
        example = records.to_example(info, {"id": "0", **record})  # ids are added to records without one
        assert example["source"] and example["target"]
        shown[info] = record
    assert set(shown) == set(tasks.PRESETS)
    text = (DOCS / "data.md").read_text(encoding="utf-8")
    assert "from `<<48/2=24>>24` to\n`[ 48/2 = 24 ] 24`" in text and annotate("<<48/2=24>>24") == "[ 48/2 = 24 ] 24"
    for task in tasks.PRESETS:  # the table of presets names each one's fields and metrics
        row = next(line for line in (DOCS / "data.md").read_text().split("\n") if line.startswith(f"| `{task}` |"))
        tdef = tasks.resolve(task)
        assert all(f"`{field}`" in row for field in tdef["fields"].values()), row
        assert all(f"`{metric}`" in row for metric in tdef["metrics"]), row


def test_yaml_examples_are_valid_configs():
    """Every YAML block of README.md and docs/ is config: a whole config (it has `architecture`) is
    validated as one, a fragment block by block."""
    checked = 0
    for path in MARKDOWN:
        for info, body in _blocks(path, "yaml"):
            if info.endswith(".yaml"):  # a named config file that extends another: test_own_model_recipes
                continue
            config = yaml.safe_load(body)
            if "architecture" in config:
                kconfig.validate(kconfig.resolve_extends(config, REPO_ROOT))
            else:
                for key, block in config.items():
                    kconfig.validate_block(key, block)
            checked += 1
    assert checked >= 4
    with pytest.raises(kconfig.ConfigError):
        kconfig.validate_block("analysis", {"k_sweep": [1], "no_such_key": 1})


# --- the own-model recipes of docs/configuration.md ---------------------------------------------------


def recipes() -> dict[str, str]:
    """The config files docs/configuration.md shows (```yaml NAME.yaml blocks), by file name."""
    return {info: body for info, body in _blocks(DOCS / "configuration.md", "yaml") if info.endswith(".yaml")}


def _write_recipes(folder: Path, base: dict) -> None:
    (folder / "config.yaml").write_text(yaml.safe_dump(base, sort_keys=False))
    for name, body in recipes().items():
        (folder / name).write_text(body)


@pytest.mark.slow
def test_own_model_recipes(tmp_path):
    """Each recipe's DAG builds against the default with model folders made here (a tiny T5 teacher and
    student saved with save_pretrained and the task's tokenizer), and the student recipe trains its
    student a few steps on a tiny base config."""
    from test_own_models import save_model, task_tokenizer

    from ketchup import paths
    from snakemake_runner import snakemake

    assert set(recipes()) == {"my-teacher.yaml", "my-student.yaml"}
    tokenizer = task_tokenizer()
    default = yaml.safe_load((REPO_ROOT / "config.yaml").read_text())
    work = tmp_path / "default"
    for name, seed in (("my-teacher", 0), ("my-student", 1)):
        save_model(work / "models" / name, tokenizer, seed=seed)
    _write_recipes(work, default)
    counts = {}
    for name in recipes():
        out = snakemake(work, work / name, "-n", "results/tables/main.csv").stdout
        counts[name] = {line.split()[0]: int(line.split()[1]) for line in out.splitlines()
                        if len(line.split()) == 2 and line.split()[1].isdigit()}
    # no tokenizer job (the teacher's is used); the student recipe's `small` is loaded, not pretrained
    assert "tokenizer" not in counts["my-teacher.yaml"] and counts["my-teacher.yaml"]["pretrain"] == 6
    assert counts["my-student.yaml"]["pretrain"] == 3 and counts["my-student.yaml"]["student"] == 72

    tiny = yaml.safe_load((REPO_ROOT / "workflow/configs/test.yaml").read_text())
    tiny["students"] = {"small": {"config": tiny["students"]["tiny"]["config"]}}
    tiny["methods"] = ["kl"]
    tiny["teacher"]["train"].update(max_steps=2, eval_every=1)
    tiny["train"].update(max_steps=2, eval_every=1)
    tiny["tasks"]["en_nl"].update(n_train=40, n_dev=8, n_test=8)
    work = tmp_path / "tiny"
    for name, seed in (("my-teacher", 0), ("my-student", 1)):
        save_model(work / "models" / name, tokenizer, seed=seed)
    _write_recipes(work, tiny)
    snakemake(work, work / "my-student.yaml", paths.predictions("en_nl", "small", "kl", 0))
    metrics = [json.loads(line) for line in
               (work / paths.student_model("en_nl", "small", "kl", 0) / "metrics.jsonl").open()]
    assert max(r["step"] for r in metrics) == 2
    assert len((work / paths.predictions("en_nl", "small", "kl", 0)).read_text().splitlines()) == 8
