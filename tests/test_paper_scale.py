"""Paper-scale configs and cluster profiles, checked offline.

- workflow/configs/paper.yaml and paper_qwen.yaml build the full DAG (dry run, nothing downloaded)
  with the job counts their tasks, students, methods and seeds imply;
- under profiles/slurm the training and generation jobs resolve to one GPU each and the
  data / score / table jobs to none, as the SLURM plugin would submit them (its own sbatch builder);
- every rule the profiles name exists in the workflow;
- a model and tokenizer given by hub name go through the same code as a local directory: tiny T5
  and Qwen2 models saved with save_pretrained load by path and generate (seq2seq and decoder-only).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from ketchup import config as kconfig

REPO_ROOT = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO_ROOT / "Snakefile"
CONFIGS = REPO_ROOT / "workflow" / "configs"
PROFILES = REPO_ROOT / "profiles"
PAPER_CONFIGS = ["paper.yaml", "paper_qwen.yaml"]
TARGET = "results/tables/main.csv"

# Rules that load models onto a GPU; every other rule (data, tokenizer, scores, tables, figures,
# LLM-judge calls) runs on CPUs.
GPU_RULES = {"teacher", "pretrain", "student", "teacher_outputs", "grad_variance", "plan_calibrate"}
CPU_RULES = {"data", "tokenizer", "score_student", "score_teacher", "main_table"}


def snakemake(*args: str, cwd: Path, timeout: float = 120) -> str:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), *args]
    run = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, f"{' '.join(cmd)} failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return run.stdout + run.stderr


def job_stats(output: str) -> dict[str, int]:
    """The dry run's "Job stats" table as {rule: count}."""
    table = output[output.index("Job stats:"):]
    counts = {}
    for line in table.splitlines()[3:]:
        name, _, count = line.partition(" ")
        if name == "total" or not count.strip():
            break
        counts[name] = int(count)
    return counts


def dry_run_jobs(output: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, resources) of every job a `snakemake -n` run lists, resources as printed."""
    jobs: list[tuple[str, dict[str, str]]] = []
    for line in output.splitlines():
        if m := re.match(r"^(?:local)?rule (\S+):$", line):
            jobs.append((m.group(1), {}))
        elif (m := re.match(r"^\s+resources: (.*)$", line)) and jobs:
            jobs[-1][1].update(kv.split("=", 1) for kv in m.group(1).split(", "))
    return jobs


def expected_counts(config: dict) -> dict[str, int]:
    tasks, students = len(config["tasks"]), len(config["students"])
    runs = tasks * students * len(config["methods"]) * len(config["seeds"])
    counts = {
        "data": tasks,
        "tokenizer": tasks if config["tokenizer"]["kind"] == "train" else 0,
        "teacher": tasks,
        "teacher_outputs": 2 * tasks,  # train (pseudo-targets) and test (the teacher row)
        "score_teacher": tasks,
        "student": runs,
        "score_student": runs,
        "main_table": 1,
    }
    return {rule: n for rule, n in counts.items() if n}


# --- the paper configs ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_paper_config_settings(name):
    config = kconfig.load(CONFIGS / name)
    assert config["methods"] == ["prompted", "sft", "seqkd", "kl", "js", "tvd", "llmr", "llmr-mean", "llmr-minvar",
                                 "ketchup"]
    assert len(config["seeds"]) == 3
    assert {t: s["source"] for t, s in config["tasks"].items()} == {"xsum": "hub", "en_nl": "hub", "gsm8k": "hub"}
    assert config["tokenizer"]["kind"] == "pretrained"
    assert config["analysis"]["k_sweep"] == [1, 2, 4, 8, 16]
    # The reference's RL settings (scripts/reinforce_xsum.sh, reinforce.py, Mymodel.py Net.reinforce).
    assert kconfig.rl_settings(config, "ketchup") == {
        "rollout": "greedy", "rollout_dropout": True, "baseline_scope": "sequence", "value": "max", "clip": 50.0,
        "denom": 1.0, "token_weight": "prob", "entropy_coef": 0.0, "normalize": "sequence"}
    # The reference's KD settings (scripts/distill_xsum.sh: 8 x 32 x 2 GPUs, fp32, no clipping).
    for method in ("sft", "seqkd", "kl", "js", "tvd"):
        settings = kconfig.optim_settings(config, method)
        assert (settings["lr"], settings["epochs"], settings["batch_size"] * settings["grad_accum"],
                settings["eval_every"], settings["max_grad_norm"], settings["mixed_precision"]) == \
            (1e-4, 5, 512, 12, None, "no"), method
    # The reference's 1 x 8 RL updates decoded as one micro-batch of 8 rollouts: the same estimator with
    # per-sequence baselines and normalisation (tests/test_rl_microbatches.py).
    for method in ("llmr", "llmr-mean", "llmr-minvar", "ketchup"):
        settings = kconfig.optim_settings(config, method)
        assert (settings["lr"], settings["batch_size"], settings["grad_accum"], settings["eval_every"],
                settings["max_grad_norm"], settings["mixed_precision"]) == (1e-5, 8, 1, 8, None, "no"), method
    assert config["teacher"]["finetune"] is False  # prompted teachers, as the reference
    assert kconfig.generation_settings(config, "xsum")["num_beams"] == 1
    for task in config["tasks"].values():
        assert task["max_source_length"] == 512
    assert config["tasks"]["xsum"]["prompt"] == "summarize: "
    assert config["tasks"]["en_nl"]["prompt"] == "translate English to Dutch: "
    ks = {t: s["k"] for t, s in config["tasks"].items()}
    if name == "paper.yaml":
        assert config["architecture"] == "seq2seq"
        assert config["teacher"]["model"] == {"name_or_path": "google/flan-t5-xl"}
        assert config["students"] == {size: {"name_or_path": f"google-t5/t5-{size}"} for size in ("small", "base", "large")}
        assert ks == {"xsum": 2, "en_nl": 4, "gsm8k": 8}
    else:
        assert config["architecture"] == "decoder"
        assert config["teacher"]["model"] == {"name_or_path": "Qwen/Qwen1.5-4B"}
        assert list(config["students"].values()) == [{"name_or_path": "Qwen/Qwen1.5-0.5B"}]
        assert ks == {"xsum": 2, "en_nl": 2, "gsm8k": 16}


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_paper_config_settings_name_their_source(name):
    """Every KD / RL setting line says which reference flag it comes from, or `# chosen`."""
    block, checked = None, 0
    for line in (CONFIGS / name).read_text().splitlines():
        if line and not line.startswith((" ", "#")):
            block = line.split(":")[0]
            continue
        setting = line.startswith("    ") if block == "method_overrides" else line.startswith("  ")
        if block in ("train", "rl_train", "method_overrides", "rl", "generation") and setting and not line.strip().startswith("#"):
            assert "#" in line, f"{name}: {line.strip()!r} names no source (a reference flag or '# chosen')"
            checked += 1
    assert checked >= 25


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_paper_config_dry_run_builds_full_dag(name, tmp_path):
    config = kconfig.load(CONFIGS / name)
    out = snakemake("-n", "--quiet", "rules", "--configfile", str(CONFIGS / name), "--directory", str(tmp_path),
                    TARGET, cwd=tmp_path)
    assert job_stats(out) == expected_counts(config)


# --- the profiles ---------------------------------------------------------------------------------


def _profile(name: str) -> dict:
    return yaml.safe_load((PROFILES / name / "config.yaml").read_text())


def _named_rules(profile: dict) -> set[str]:
    return set(profile.get("set-resources", {})) | set(profile.get("set-threads", {}))


def test_profiles_name_only_existing_rules(tmp_path):
    out = snakemake("--list-rules", "--directory", str(tmp_path), cwd=tmp_path)
    rules = {line.strip() for line in out.splitlines() if re.fullmatch(r"\s*[A-Za-z_][A-Za-z0-9_]*\s*", line)}
    assert GPU_RULES | CPU_RULES <= rules, rules
    for name in ("slurm", "workstation"):
        named = _named_rules(_profile(name))
        assert named <= rules, f"{name} profile names unknown rules {sorted(named - rules)}"


def test_slurm_profile_marks_site_values():
    profile = _profile("slurm")
    assert profile["executor"] == "slurm"
    defaults = profile["default-resources"]
    assert "EDIT" in defaults["slurm_account"] and "EDIT" in defaults["slurm_partition"]
    assert defaults["cpus_per_task"] == 1
    assert {"retries", "latency-wait", "rerun-incomplete", "jobs"} <= set(profile)
    gpu_rules = {rule for rule, res in profile["set-resources"].items() if res.get("gpu") or "gres" in res}
    assert gpu_rules == GPU_RULES


def _sbatch(rule: str, resources: dict[str, str], threads: int = 1) -> str:
    """The sbatch call snakemake-executor-plugin-slurm builds for a job with these resources."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    class Resources(dict):
        __getattr__ = dict.__getitem__

    res = Resources({k: int(v) if v.isdigit() else v for k, v in resources.items() if "<TBD>" not in v})
    job = SimpleNamespace(resources=res, threads=threads, name=rule, is_group=lambda: False)
    params = {"run_uuid": "uuid", "slurm_logfile": "log", "comment_str": f"rule_{rule}", "workdir": "/w",
              "account": f" -A {res['slurm_account']}", "partition": f" -p {res['slurm_partition']}"}
    return get_submit_command(job, params) + set_gres_string(job)


@pytest.mark.parametrize("name", ["paper.yaml", "paper_qwen.yaml", "test.yaml"])
def test_slurm_profile_gives_gpus_to_training_and_generation_only(name, tmp_path):
    # `all`: the main table and every analysis, so each rule of the workflow shows up.
    out = snakemake("-n", "--profile", str(PROFILES / "slurm"), "--configfile", str(CONFIGS / name),
                    "--directory", str(tmp_path), "all", cwd=tmp_path)
    jobs = dry_run_jobs(out)
    assert len(jobs) == sum(job_stats(out).values())
    seen = set()
    for rule, res in jobs:
        seen.add(rule)
        assert res["slurm_account"] == "EDIT-account", (rule, res)
        sbatch = _sbatch(rule, res)
        if rule in GPU_RULES:
            assert res["gpu"] == "1" and res["slurm_partition"] == "EDIT-gpu-partition", (rule, res)
            assert int(res["cpus_per_task"]) > 1 and int(res["mem_mb"]) >= 32000, (rule, res)
            assert "--gpus=1" in sbatch and "-p EDIT-gpu-partition" in sbatch, sbatch
            if rule == "teacher":  # prompted (the paper configs): a short load-and-save; fine-tuned: 48 h
                prompted = not kconfig.load(CONFIGS / name)["teacher"].get("finetune", True)
                assert (int(res["runtime"]) <= 120) if prompted else (int(res["runtime"]) == 2880), (name, res)
        else:
            assert not {"gpu", "gpu_model", "gres"} & set(res), (rule, res)
            assert res["slurm_partition"] == "EDIT-cpu-partition" and res["cpus_per_task"] == "1", (rule, res)
            assert "--gpus" not in sbatch and "--gres" not in sbatch, sbatch
            assert "--cpus-per-task=1" in sbatch, sbatch
    assert GPU_RULES - {"pretrain", "plan_calibrate"} <= seen and {"data", "score_student", "score_teacher", "main_table"} <= seen
    if name == "test.yaml":  # models built from config: a trained tokenizer, a pretrained student
        assert {"tokenizer", "pretrain"} <= seen


def test_workstation_profile_caps_concurrent_gpu_jobs(tmp_path):
    profile = _profile("workstation")
    assert profile["executor"] == "local"
    (limit,) = [int(r.split("=")[1]) for r in profile["resources"] if r.startswith("gpu=")]
    assert limit >= 1
    out = snakemake("-n", "--profile", str(PROFILES / "workstation"), "--configfile", str(CONFIGS / "test.yaml"),
                    "--directory", str(tmp_path), TARGET, cwd=tmp_path)
    jobs = dry_run_jobs(out)
    assert jobs
    for rule, res in jobs:
        assert res.get("gpu") == ("1" if rule in GPU_RULES else None), (rule, res)
    # profiles/default, beside the Snakefile, still applies as the workflow profile under --profile
    assert f"workflow specific profile {PROFILES / 'default'}" in out


# --- loading by name = loading from a directory ---------------------------------------------------

TEXTS = ["translate English to Dutch: the cat sat on the mat", "de kat zat op de mat",
         "summarize: a long story about a small dog", "a dog story", "what is 2 plus 3? #### 5"] * 4

TINY = {
    "seq2seq": {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 1, "num_decoder_layers": 1, "num_heads": 4},
    "decoder": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
                "num_key_value_heads": 2, "max_position_embeddings": 128},
}


def _save_tiny(arch: str, directory: Path) -> None:
    """A tiny model and its tokenizer saved with save_pretrained, as a hub snapshot is laid out."""
    from ketchup.models import build_model
    from ketchup.tokenizer import train_tokenizer

    tok = train_tokenizer(TEXTS, 200)
    model = build_model(arch, {"config": TINY[arch]}, tok, seed=0)
    if arch == "decoder":  # like Qwen's tokenizers: no padding token of its own
        tok.pad_token = None
        model.config.pad_token_id = None
    model.save_pretrained(directory)
    tok.save_pretrained(directory)


@pytest.mark.parametrize("arch", ["seq2seq", "decoder"])
def test_model_and_tokenizer_load_by_path_and_generate(arch, tmp_path):
    import torch

    from ketchup.models import build_model, load_model, load_tokenizer
    from ketchup.stages import generate_texts

    path = tmp_path / "tiny"
    _save_tiny(arch, path)
    tok = load_tokenizer(str(path))
    assert tok.pad_token_id is not None  # decoder tokenizers without one get EOS as padding
    by_spec = build_model(arch, {"name_or_path": str(path)}, tokenizer=None).eval()
    by_path = load_model(arch, str(path)).eval()
    for a, b in zip(by_spec.state_dict().values(), by_path.state_dict().values()):
        assert torch.equal(a, b)
    sources = TEXTS[:5:2]
    gen = {"max_new_tokens": 6, "batch_size": 2, "num_beams": 1}
    outs = [generate_texts(m, tok, arch, sources, gen, 32) for m in (by_spec, by_path)]
    assert outs[0] == outs[1]
    assert len(outs[0]) == len(sources) and all(isinstance(o, str) for o in outs[0])


@pytest.mark.parametrize("arch", ["seq2seq", "decoder"])
def test_stages_load_teacher_and_student_by_path(arch, tmp_path):
    """The pipeline's stages take a local directory wherever a config gives a hub name."""
    from ketchup import stages
    from ketchup.data import synthetic
    from ketchup.io import read_jsonl, write_jsonl

    path = tmp_path / "tiny"
    _save_tiny(arch, path)
    data = tmp_path / "data"
    for split in ("train", "dev", "test"):
        write_jsonl(data / f"{split}.jsonl", synthetic.generate("en_nl", split, 3, 0))
    prompt = "translate English to Dutch: "
    gen = {"max_new_tokens": 5, "batch_size": 4, "num_beams": 1}

    # Teacher outputs from a model directory (as `generate --teacher` runs on a saved teacher).
    out = tmp_path / "teacher_outputs.jsonl"
    stages.outputs(task="en_nl", arch=arch, model_dir=str(path), data_path=str(data / "test.jsonl"), prompt=prompt,
                   gen=gen, max_source_length=32, out_path=str(out), teacher=True)
    rows = read_jsonl(out)
    assert len(rows) == 3 and {"id", "source", "reference", "prediction"} <= set(rows[0])

    # A student given as {name_or_path: <dir>} (the prompted student: loaded and saved as it is).
    spec = {"task": "en_nl", "arch": arch, "prompt": prompt, "student": "tiny", "method": "prompted",
            "model": {"name_or_path": str(path)}, "train": kconfig.optim_settings({}), "rl": {}, "k": 1,
            "generation": gen, "seed": 0, "max_source_length": 32, "max_target_length": 8}
    student = tmp_path / "student"
    predictions = tmp_path / "predictions.jsonl"
    stages.student(spec=spec, data_dir=str(data), teacher_outputs_dir=str(tmp_path), teacher_dir=str(path),
                   init_dir=None, ckpt_dir=str(tmp_path / "ckpt"), out_dir=str(student),
                   predictions_path=str(predictions))
    assert [r["prediction"] for r in read_jsonl(predictions)] == [r["prediction"] for r in rows]
    again = tmp_path / "again.jsonl"  # the saved student predicts the same as the job did
    stages.outputs(task="en_nl", arch=arch, model_dir=str(student), data_path=str(data / "test.jsonl"),
                   prompt=prompt, gen=gen, max_source_length=32, out_path=str(again))
    assert read_jsonl(again) == read_jsonl(predictions)
