"""Config validation: the shipped configs pass, every kind of mistake fails naming its key,
and a Snakemake dry run with a bad config stops before building any job."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from ketchup import config as kconfig
from ketchup.config import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO_ROOT / "Snakefile"
PAPER_CONFIGS = sorted((REPO_ROOT / "workflow" / "configs").glob("*.yaml"))


def _raises(config: dict, *fragments: str) -> str:
    with pytest.raises(ConfigError) as info:
        kconfig.validate(config)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


# --- the shipped configs -------------------------------------------------------------------------


def test_schema_is_a_valid_json_schema():
    schema = yaml.safe_load(kconfig.SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)


def test_default_config_validates():
    config = kconfig.load(REPO_ROOT / "config.yaml")
    assert set(config["tasks"]) == {"xsum", "en_nl", "gsm8k"}
    # The embedded default runs offline: every task is synthetic.
    assert {t["source"] for t in config["tasks"].values()} == {"synthetic"}


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=[p.name for p in PAPER_CONFIGS])
def test_workflow_configs_validate(path):
    # `--configfile FILE` replaces config.yaml whole, so each file must validate on its own.
    config = kconfig.load(path)
    assert config["tasks"]


# --- schema violations name the offending key -----------------------------------------------------


def test_unknown_top_level_key(default_config):
    default_config["learning_rate"] = 0.1
    _raises(default_config, "learning_rate")


def test_unknown_nested_key(default_config):
    default_config["tasks"]["xsum"]["foo"] = 1
    _raises(default_config, "tasks.xsum.foo")


def test_unknown_key_in_optim_block(default_config):
    default_config["teacher"]["train"]["learning_rate"] = 0.1
    _raises(default_config, "teacher.train.learning_rate")


def test_wrong_type(default_config):
    default_config["tasks"]["xsum"]["k"] = "two"
    _raises(default_config, "tasks.xsum.k", "'two'")


def test_out_of_range_value(default_config):
    default_config["train"]["lr"] = 0
    _raises(default_config, "train.lr")


def test_unknown_task(default_config):
    default_config["tasks"]["cnn"] = {"source": "synthetic"}
    _raises(default_config, "tasks.cnn")


def test_unknown_source(default_config):
    default_config["tasks"]["gsm8k"]["source"] = "s3"
    _raises(default_config, "tasks.gsm8k.source", "s3")


def test_unknown_method(default_config):
    default_config["methods"] = ["sft", "dpo"]
    _raises(default_config, "methods", "dpo")


def test_unknown_method_override(default_config):
    default_config["method_overrides"] = {"dpo": {"lr": 1e-3}}
    _raises(default_config, "method_overrides.dpo")


def test_bad_student_name(default_config):
    default_config["students"]["extra large"] = {"config": {"d_model": 8}}
    _raises(default_config, "students.extra large")


def test_student_without_config_or_name(default_config):
    default_config["students"]["tiny"] = {}
    _raises(default_config, "students.tiny")


def test_student_with_both_config_and_name(default_config):
    default_config["students"]["tiny"] = {"config": {"d_model": 8}, "name_or_path": "t5-small"}
    _raises(default_config, "students.tiny")


def test_missing_required_section(default_config):
    del default_config["students"]
    _raises(default_config, "students")


def test_duplicate_seeds(default_config):
    default_config["seeds"] = [0, 0]
    _raises(default_config, "seeds")


def test_every_error_is_listed(default_config):
    default_config["tasks"]["xsum"]["k"] = "two"
    default_config["methods"] = ["dpo"]
    _raises(default_config, "tasks.xsum.k", "methods", "dpo")


def test_method_names_agree_everywhere(monkeypatch):
    """One description of each method (ketchup.registry): the schema, the families, the tables, the DAG."""
    from ketchup import registry
    from ketchup.analysis.common import METHOD_NAMES, METHOD_ORDER
    from ketchup.analysis.paper import paper_numbers
    from ketchup.tables import method_k

    methods = registry.NAMES
    schema = kconfig.load_schema()["$defs"]
    assert schema["method"]["enum"] == methods and schema["trained_method"]["enum"] == methods[1:]
    raw = kconfig.SCHEMA_PATH.read_text()
    assert not any(f" {m}," in raw or f"[{m}," in raw for m in ("llmr-mean", "prompted")), "names listed twice"
    assert METHOD_ORDER == ["teacher", *methods] and set(METHOD_NAMES) == set(METHOD_ORDER)
    assert set(paper_numbers().method) <= set(METHOD_ORDER)
    assert {m: method_k(m, 8) for m in registry.RL_METHODS} == {"llmr": 1, "llmr-mean": 1, "llmr-minvar": 1,
                                                               "ketchup": 8, "llmr-ppo": 1, "ketchup-ppo": 8}
    assert registry.PPO_METHODS == ["llmr-ppo", "ketchup-ppo"] and registry.K_SWEEP == "ketchup"
    assert registry.method_and_k("ketchup-ppo", 8) == ("ketchup-ppo", 8)
    assert METHOD_NAMES["ketchup-ppo"] == "KETCHUP + PPO" and METHOD_NAMES["ketchup"] == "KETCHUP"
    assert method_k("ketchup-k4", 8) == 4 and method_k("kl", 8) is None
    common = (REPO_ROOT / "workflow" / "rules" / "common.smk").read_text()
    assert "method=registry.run_pattern()" in common
    for path in [REPO_ROOT / "config.yaml", *PAPER_CONFIGS]:
        config = kconfig.read(path)
        # every method, but the paper's own runs: the paper's methods (PPO and the divergences after
        # tvd are beyond the paper); the default runs every method but those (onpolicy.yaml adds them,
        # the CPU study runs them all), the tiny test config two of them (one of each plumbing)
        beyond = ["gkd", "rkl", "skl", "srkl"]
        paper = [m for m in methods if not registry.get(m).ppo and m not in beyond]
        default = [m for m in methods if m not in beyond]
        expected = {"paper.yaml": paper, "paper_qwen.yaml": paper, "paper_budget.yaml": paper, "smollm2_gsm8k.yaml": paper,
                    "study.yaml": methods, "onpolicy.yaml": methods, "test.yaml": [*default, "gkd", "srkl"],
                    "test_decoder.yaml": [*default, "gkd", "srkl"]}
        assert config["methods"] == expected.get(path.name, default), path.name
        # Every RL method of a shipped config trains alike, so that the baselines compare fairly.
        settings = [kconfig.optim_settings(config, m) for m in registry.RL_METHODS if m in config["methods"]]
        assert all(s == settings[0] for s in settings), path.name
    # A method added to the registry alone is known everywhere the names are read from it.
    new = registry.Method("new-rl", "rl", "teacher", "task", "kl")
    monkeypatch.setitem(registry.METHODS, "new-rl", new)
    monkeypatch.setattr(registry, "NAMES", [*registry.NAMES, "new-rl"])
    assert "new-rl" in kconfig.load_schema()["$defs"]["method"]["enum"]
    assert re.fullmatch(registry.run_pattern(), "new-rl") and method_k("new-rl", 8) == 8


# --- cross-key rules ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["llmr", "llmr-mean", "llmr-minvar", "ketchup"])
def test_rl_methods_need_kl(default_config, method):
    default_config["methods"] = ["sft", method]
    _raises(default_config, "methods", "kl", method)
    default_config["methods"] = ["sft", "kl", method]
    kconfig.validate(default_config)


def test_local_source_needs_path(default_config):
    default_config["tasks"]["gsm8k"] = {"source": "local"}
    _raises(default_config, "tasks.gsm8k.path")
    default_config["tasks"]["gsm8k"]["path"] = "/data/gsm8k"
    kconfig.validate(default_config)


def test_pretrained_tokenizer_needs_a_name(default_config):
    default_config["tokenizer"] = {"kind": "pretrained"}
    _raises(default_config, "tokenizer.name_or_path")
    default_config["tokenizer"]["name_or_path"] = "t5-small"
    kconfig.validate(default_config)


def test_trained_tokenizer_needs_models_from_config(default_config):
    default_config["teacher"]["model"] = {"name_or_path": "t5-base"}
    _raises(default_config, "tokenizer.kind")


def test_pretrain_only_for_students_built_from_config(default_config):
    default_config["students"]["small"]["pretrain"] = {}  # every setting at its default
    kconfig.validate(default_config)
    default_config["students"]["loaded"] = {"name_or_path": "t5-small", "pretrain": {"steps": 10}}
    _raises(default_config, "config key 'students.loaded.pretrain'", "built from config", "name_or_path")
    default_config["students"]["loaded"] = {"from_teacher": {"encoder_layers": [0], "decoder_layers": [0]},
                                           "pretrain": {}}
    _raises(default_config, "config key 'students.loaded.pretrain'", "from_teacher")
    del default_config["students"]["loaded"]
    default_config["teacher"]["model"]["pretrain"] = {}
    _raises(default_config, "config key 'teacher.model.pretrain'", "only students")


def test_pretrain_block_keys_and_held_out_examples(default_config):
    default_config["students"]["small"]["pretrain"] = {"steps": 10, "noise": 0.2}
    _raises(default_config, "config key 'students.small.pretrain.noise': unknown key")
    default_config["students"]["small"]["pretrain"] = {"noise_density": 0.6}
    _raises(default_config, "students.small.pretrain.noise_density")
    default_config["students"]["small"]["pretrain"] = {"dev_examples": 2000}  # xsum and en_nl have 2000 train records
    _raises(default_config, "config key 'students.small.pretrain.dev_examples'", "tasks.xsum.n_train")
    default_config["students"]["small"]["pretrain"] = {"steps": 7, "lr": 0.01}
    assert kconfig.pretrain_settings(default_config, "small") == {**kconfig.PRETRAIN_DEFAULTS, "steps": 7, "lr": 0.01}
    optim = kconfig.pretrain_optim(kconfig.pretrain_settings(default_config, "small"))
    assert optim == {**kconfig.OPTIM_DEFAULTS, "max_steps": 7, "lr": 0.01, "batch_size": 32, "warmup_steps": 100,
                     "eval_every": 100, "checkpoint_every": 100}


# --- load() ---------------------------------------------------------------------------------------


def test_load_rejects_invalid_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("tasks: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        kconfig.load(path)


def test_load_applies_overrides_then_validates(tmp_path):
    path = REPO_ROOT / "config.yaml"
    config = kconfig.load(path, overrides={"tasks": {"xsum": {"k": 3}}})
    assert config["tasks"]["xsum"]["k"] == 3
    assert config["tasks"]["xsum"]["source"] == "synthetic"  # deep merge keeps siblings
    with pytest.raises(ConfigError, match=r"tasks\.xsum\.k"):
        kconfig.load(path, overrides={"tasks": {"xsum": {"k": 0}}})


def test_settings_precedence(default_config):
    default_config["train"] = {"lr": 0.5, "batch_size": 4}
    default_config["method_overrides"] = {"kl": {"lr": 0.25}}
    kl = kconfig.optim_settings(default_config, "kl")
    assert (kl["lr"], kl["batch_size"], kl["grad_accum"]) == (0.25, 4, kconfig.OPTIM_DEFAULTS["grad_accum"])
    assert kconfig.optim_settings(default_config, "sft")["lr"] == 0.5
    default_config["rl"] = {"clip": 5.0}
    assert kconfig.rl_settings(default_config) == {**kconfig.RL_DEFAULTS, "clip": 5.0}


def test_processes_per_stage_and_method_stay_out_of_the_specs(default_config):
    """`processes` (ketchup.launch) is read per rule, through the layers of its stage, and never
    reaches a stage's settings: a config without it keeps its specs and resume fingerprints."""
    config = default_config
    assert kconfig.processes(config, "student", method="kl") == 1
    config["train"] = {**config.get("train", {}), "processes": 2}
    config["method_overrides"] = {"ketchup": {"processes": 4}}
    config["rl_train"] = {"processes": 5}  # the RL methods' layer, under method_overrides
    config["teacher"]["train"] = {**config["teacher"].get("train", {}), "processes": 3}
    config["students"]["small"]["pretrain"] = {"processes": 2}
    kconfig.validate(config)
    assert kconfig.processes(config, "student", method="kl") == 2
    assert kconfig.processes(config, "student", method="ketchup-k4") == 4  # a K-sweep run is its method's
    assert kconfig.processes(config, "student", method="llmr") == 5
    assert kconfig.processes(config, "teacher", task="xsum") == kconfig.processes(config, "teacher_outputs", "xsum") == 3
    assert kconfig.processes(config, "pretrain", student="small") == 2
    assert kconfig.processes(config, "grad_variance") == kconfig.processes(config, "data") == 1
    for settings in (kconfig.optim_settings(config, "ketchup"), kconfig.optim_settings(config, "llmr"),
                     kconfig.teacher_settings(config, "xsum"),
                     kconfig.pretrain_settings(config, "small"), kconfig.OPTIM_DEFAULTS, kconfig.PRETRAIN_DEFAULTS):
        assert "processes" not in settings
    config["teacher"]["finetune"] = False  # a teacher used as loaded only saves it: one process
    assert kconfig.processes(config, "teacher", task="xsum") == 1
    assert kconfig.processes(config, "teacher_outputs", task="xsum") == 3
    config["train"]["processes"] = 0
    _raises(config, "config key 'train.processes'")


def test_rl_methods_have_their_own_optimizer_defaults(default_config):
    """train.lr set for the other methods never reaches an RL method: the RL family takes the schema's
    rl_train defaults over train, then rl_train, then method_overrides; the other keys are train's."""
    default_config["train"] = {"lr": 1e-3, "batch_size": 4, "warmup_steps": 7}
    default_config.pop("rl_train", None)
    default_config["method_overrides"] = {}
    assert kconfig.RL_OPTIM_DEFAULTS == {"lr": 1e-5}  # the reference's RL lr (docs/settings.md)
    for run in ("llmr", "llmr-mean", "llmr-minvar", "ketchup", "ketchup-k4", "llmr-ppo", "ketchup-ppo-r27"):
        rl = kconfig.optim_settings(default_config, run)
        assert (rl["lr"], rl["batch_size"], rl["warmup_steps"]) == (1e-5, 4, 7), run
    for method in ("sft", "seqkd", "kl", "js", "tvd"):
        assert kconfig.optim_settings(default_config, method)["lr"] == 1e-3, method
    assert kconfig.optim_settings(default_config)["lr"] == 1e-3  # the train block alone
    default_config["rl_train"] = {"lr": 3e-4, "batch_size": 2}
    assert (kconfig.optim_settings(default_config, "ketchup")["lr"],
            kconfig.optim_settings(default_config, "ketchup")["batch_size"]) == (3e-4, 2)
    assert kconfig.optim_settings(default_config, "kl")["batch_size"] == 4
    default_config["method_overrides"] = {"llmr": {"lr": 0.5}}
    assert kconfig.optim_settings(default_config, "llmr")["lr"] == 0.5
    assert kconfig.optim_settings(default_config, "ketchup")["lr"] == 3e-4
    kconfig.validate(default_config)
    default_config["rl_train"] = {"lr": 1e-4, "momentum": 0.9}
    _raises(default_config, "rl_train.momentum")


# --- Snakemake stops at DAG build -----------------------------------------------------------------


def _dry_run(configfile: Path, workdir: Path) -> subprocess.CompletedProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "snakemake", "results/tables/main.csv", "-n", "--cores", "1",
           "-s", str(SNAKEFILE), "--directory", str(workdir), "--configfile", str(configfile)]
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda c: c["tasks"]["xsum"].__setitem__("k", "two"), "tasks.xsum.k"),
        (lambda c: c["tasks"].__setitem__("cnn", {"source": "synthetic"}), "tasks.cnn"),
        (lambda c: c.__setitem__("methods", ["sft", "ketchup"]), "'kl'"),
        # a 699-token document corrupts into 35 spans, more than the trained tokenizer's sentinels
        (lambda c: c.__setitem__("students", {"small": {**c["students"]["small"], "pretrain": {}}})
         or c["tasks"]["xsum"].__setitem__("max_source_length", 700),
         "'students.small.pretrain': span corruption of a 699-token document of xsum"),
    ],
    ids=["wrong-type", "unknown-task", "rl-without-kl", "too-few-sentinels"],
)
def test_snakemake_dry_run_rejects_bad_config(tmp_path, default_config, mutate, key):
    mutate(default_config)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(default_config))
    workdir = tmp_path / "work"
    proc = _dry_run(bad, workdir)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert key in output, output
    assert "Traceback" not in output, output  # a config error, not a crash
    assert not (workdir / "results").exists()


def test_snakemake_dry_run_accepts_default_config(tmp_path):
    # Control for the test above: the same command with a good config builds the DAG.
    workdir = tmp_path / "work"
    proc = _dry_run(REPO_ROOT / "config.yaml", workdir)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "main_table" in output
    assert not (workdir / "results").exists()


def test_each_task_decodes_up_to_its_target_length_unless_generation_says(default_config):
    assert "max_new_tokens" not in default_config["generation"]
    for task, spec in default_config["tasks"].items():
        assert kconfig.generation_settings(default_config, task)["max_new_tokens"] == spec["max_target_length"]
    config = {**default_config, "generation": {**default_config["generation"], "max_new_tokens": 7}}
    assert {kconfig.generation_settings(config, t)["max_new_tokens"] for t in config["tasks"]} == {7}
    bare = {**default_config, "tasks": {"xsum": {"source": "synthetic"}}}
    assert kconfig.task_lengths(bare, "xsum") == (512, 128)
    assert kconfig.generation_settings(bare, "xsum")["max_new_tokens"] == 128


def test_split_sizes_take_a_number_or_all(default_config):
    default_config["tasks"]["gsm8k"] = {"source": "local", "path": "/data/gsm8k", "n_train": "all", "n_test": 100}
    kconfig.validate(default_config)
    default_config["tasks"]["gsm8k"]["n_test"] = "some"
    _raises(default_config, "tasks.gsm8k.n_test")
    default_config["tasks"]["gsm8k"] = {"source": "synthetic", "n_dev": "all"}  # a generator has no 'all'
    _raises(default_config, "tasks.gsm8k.n_dev", "hub or local")


def test_a_block_given_alone_is_checked_against_its_part_of_the_schema():
    from ketchup.judge.config import JudgeConfigError, load_config

    kconfig.validate_block("judge", {"concurrency": 2, "criteria": ["overall"]})
    with pytest.raises(ConfigError) as err:
        kconfig.validate_block("judge", {"concurrency": 0, "bogus": 1})
    assert "config key 'judge.concurrency'" in str(err.value)
    assert "config key 'judge.bogus': unknown key" in str(err.value)
    with pytest.raises(JudgeConfigError, match="judge.criteria"):
        load_config({"criteria": ["overall", "overall"]})  # the schema's uniqueItems, not a restated check
    assert load_config({"criteria": ["a", "b"], "timeout_s": 60}).criteria == ("a", "b")


def test_defaults_come_from_the_schema_and_keep_the_reference_values():
    """The schema's default: values are the only defaults; these are the values the code had (docs/settings.md)."""
    assert kconfig.RL_DEFAULTS == {"rollout": "greedy", "rollout_dropout": True, "baseline_scope": "sequence",
                                   "value": "max", "clip": 50.0, "denom": 1.0, "token_weight": "prob",
                                   "entropy_coef": 0.0, "normalize": "sequence", "ppo_epochs": 4,
                                   "ppo_minibatches": 1, "ppo_clip": 0.2}
    assert kconfig.OPTIM_DEFAULTS == {"lr": 1e-4, "weight_decay": 0.0, "epochs": 1, "max_steps": None,
                                      "batch_size": 16, "grad_accum": 1, "warmup_steps": 0, "lr_schedule": "constant",
                                      "max_grad_norm": 1.0, "eval_every": 100, "dev_eval_examples": 100, "checkpoint_every": 50,
                                      "mixed_precision": "no", "gradient_checkpointing": False,
                                      "group_by_length": False}
    assert kconfig.GENERATION_DEFAULTS == {"batch_size": 32, "num_beams": 1, "cache": "auto", "compile": "auto"}
    assert kconfig.LENGTH_DEFAULTS == {"max_source_length": 512, "max_target_length": 128}
    assert kconfig.PRETRAIN_DEFAULTS == {"steps": 1000, "lr": 1e-3, "batch_size": 32, "warmup_steps": 100,
                                         "noise_density": 0.15, "mean_span_length": 3.0,  # T5's
                                         "eval_every": 100, "checkpoint_every": 100, "dev_examples": 100}
    assert kconfig.TOKENIZER_DEFAULTS == {"vocab_size": 1000}
    from ketchup.analysis import settings
    from ketchup.judge.config import JudgeConfig

    assert settings.DEFAULT_K_SWEEP == [1, 2, 4, 8]
    assert settings.DEFAULTS["bootstrap"] == {"resamples": 1000, "seed": 0, "confidence": 0.95}
    assert JudgeConfig().timeout_s == 60 and JudgeConfig().criteria == ("overall", "informativeness", "coherence")
    # each default passes the schema it sits in
    for where in (("properties", "rl"), ("$defs", "optim"), ("$defs", "pretrain"), ("properties", "generation"),
                  ("properties", "judge")):
        node = kconfig.load_schema()
        for key in where:
            node = node[key]
        block = kconfig.schema_defaults(*where)
        validator = jsonschema.Draft202012Validator({**node, "$defs": kconfig.load_schema()["$defs"]})
        assert not list(validator.iter_errors(block)), where


def test_the_schema_ships_with_the_package():
    from importlib import resources

    assert (resources.files("ketchup") / "schema" / "config.schema.yaml").is_file()
    assert kconfig.SCHEMA_PATH.is_relative_to(Path(kconfig.__file__).parent)


def test_a_config_extends_another_key_by_key(tmp_path):
    from ketchup import config as kconfig

    (tmp_path / "sub").mkdir()
    (tmp_path / "base.yaml").write_text("seeds: [0]\ntasks:\n  a: {n_test: 5, k: 2}\n  b: {n_test: 7}\ntrain: {lr: 0.1}\n")
    (tmp_path / "sub/variant.yaml").write_text("extends: ../base.yaml\nseeds: [0, 1]\ntasks:\n  a: {n_test: 50}\n")
    assert kconfig.read(tmp_path / "sub/variant.yaml") == {
        "seeds": [0, 1], "tasks": {"a": {"n_test": 50, "k": 2}, "b": {"n_test": 7}}, "train": {"lr": 0.1}}
    (tmp_path / "sub/broken.yaml").write_text("extends: nowhere.yaml\n")
    with pytest.raises(kconfig.ConfigError, match="nowhere.yaml does not exist"):
        kconfig.read(tmp_path / "sub/broken.yaml")


def test_the_study_config_is_the_default_with_three_seeds_larger_test_sets_and_random_batches(repo_root):
    from ketchup import config as kconfig

    default = kconfig.read(repo_root / "config.yaml")
    study = kconfig.read(repo_root / "workflow/configs/study.yaml")
    kconfig.validate(study)
    assert study["seeds"] == [0, 1, 2]
    assert default["train"]["group_by_length"] is True and study["train"]["group_by_length"] is False
    assert {k: v for k, v in study["train"].items() if k != "group_by_length"} == \
        {k: v for k, v in default["train"].items() if k != "group_by_length"}
    for task, spec in study["tasks"].items():
        assert spec["n_test"] > default["tasks"][task]["n_test"]
        assert {k: v for k, v in spec.items() if k != "n_test"} == \
            {k: v for k, v in default["tasks"][task].items() if k != "n_test"}
    # the teacher in float32 (the CPU's auto, as the study's first run), the default's in bf16 for its budget
    assert study["teacher"]["dtype"] == "auto" and study["teacher"]["train"]["mixed_precision"] == "no"
    assert default["teacher"]["dtype"] == "bfloat16" and default["teacher"]["train"]["mixed_precision"] == "bf16"
    drop = lambda t: {**t, "dtype": None, "train": {**t["train"], "mixed_precision": None}}  # noqa: E731
    assert drop(study["teacher"]) == drop(default["teacher"])
    assert study["methods"] == [*default["methods"], "gkd", "rkl", "skl", "srkl"]
    assert {k: v for k, v in study.items() if k not in ("seeds", "tasks", "train", "teacher", "methods")} == \
        {k: v for k, v in default.items() if k not in ("seeds", "tasks", "train", "teacher", "methods")}


def test_ppo_settings_reach_the_ppo_methods_only(default_config):
    """rl.ppo_* are in the PPO methods' specs; every other method's spec (and so its resume
    fingerprint and Snakemake's params) is what it was before they existed."""
    default_config["rl"] = {k: v for k, v in default_config.get("rl", {}).items() if k != "ppo_minibatches"}
    default_config["rl"]["ppo_epochs"] = 3
    ppo = kconfig.rl_settings(default_config, "ketchup-ppo")
    assert ppo["ppo_epochs"] == 3 and ppo["ppo_minibatches"] == kconfig.RL_DEFAULTS["ppo_minibatches"]
    assert kconfig.rl_settings(default_config, "llmr-ppo") == ppo
    for method in ("ketchup", "ketchup-k4", "llmr", "kl"):
        assert not set(kconfig.PPO_KEYS) & set(kconfig.rl_settings(default_config, method))
        assert kconfig.rl_settings(default_config, method) == {
            k: v for k, v in kconfig.rl_settings(default_config).items() if k not in kconfig.PPO_KEYS}


def test_divergence_settings_reach_the_methods_that_read_them_only(default_config):
    """divergence.* are in the specs of the methods that read them (registry settings), with the
    schema's defaults under the config's; every other method's spec has no divergence block."""
    default_config["divergence"] = {"beta": 0.9}
    assert kconfig.divergence_spec(default_config, "gkd") == {
        "divergence": {"beta": 0.9, "lambda": kconfig.DIVERGENCE_DEFAULTS["lambda"]}}
    for method in ("skl", "srkl"):
        assert kconfig.divergence_spec(default_config, method) == {
            "divergence": {"alpha": kconfig.DIVERGENCE_DEFAULTS["alpha"]}}
    for method in ("rkl", "kl", "js", "tvd", "ketchup", "ketchup-k4", "sft"):
        assert kconfig.divergence_spec(default_config, method) == {}
    default_config["divergence"] = {"alpha": 1.0}
    _raises(default_config, "divergence.alpha")
    default_config["divergence"] = {"lambda": 0.5, "gamma": 1}
    _raises(default_config, "divergence", "gamma")


def test_more_ppo_minibatches_than_rollouts_is_refused(default_config):
    default_config["rl"] = {**default_config.get("rl", {}), "ppo_minibatches": 64}
    default_config["methods"] = [m for m in default_config["methods"] if m != "llmr-ppo"]  # ketchup-ppo alone
    default_config.setdefault("method_overrides", {})["ketchup-ppo"] = {"batch_size": 32}
    with pytest.raises(kconfig.ConfigError, match="rl.ppo_minibatches"):
        kconfig.validate(default_config)
    default_config["rl"]["ppo_minibatches"] = 32
    kconfig.validate(default_config)
    default_config["rl"]["ppo_clip"] = 1.0
    _raises(default_config, "rl.ppo_clip")


def test_a_student_spec_without_its_divergence_settings_is_refused():
    from ketchup import specs

    student = {"task": "en_nl", "arch": "seq2seq", "student": "tiny", "method": "gkd", "train": {}, "generation": {},
               "seed": 0, "max_source_length": 8, "max_target_length": 8, "model": {"config": {}}}
    with pytest.raises(kconfig.ConfigError, match="gkd.*divergence.beta, divergence.lambda"):
        specs.check_student(student, None)
    with pytest.raises(kconfig.ConfigError, match="divergence.lambda"):
        specs.check_student({**student, "divergence": {"beta": 0.5}}, None)
    specs.check_student({**student, "divergence": {"beta": 0.5, "lambda": 1.0}}, None)
    specs.check_student({**student, "method": "rkl"}, None)  # reads no setting
