"""Analyses, tables and figures (ketchup.analysis; workflow/rules/analysis.smk, figures.smk).

Unit tests of the estimators and formatters run in seconds; one end-to-end Snakemake run on a reduced
copy of the test config builds every analysis target (and the HTML report) into a temporary
directory, and the tests below it check each file's content.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import yaml
from matplotlib.figure import Figure

from ketchup import config as kconfig, registry
from ketchup.analysis import figures, settings, significance, tables_paper, variance
from ketchup.analysis.common import primary_metric
from ketchup.analysis.equal_time import equal_time_table, train_time
from ketchup.analysis.ksweep import k_sweep_table
from ketchup.analysis.paper import comparison, paper_numbers
from snakemake_runner import REPO_ROOT, snakemake, write_config

TEST_CONFIG = REPO_ROOT / "workflow" / "configs" / "test.yaml"


# ---------------------------------------------------------------------------------------------
# the variance estimator
# ---------------------------------------------------------------------------------------------


def _gaussian(seed: int, m: int = 20, eig: np.ndarray | None = None, mean: float = 3.0) -> np.ndarray:
    eig = np.linspace(0.5, 2.0, 40) if eig is None else eig
    rng = np.random.default_rng(seed)
    return rng.normal(size=(m, eig.size)) * np.sqrt(eig) + mean


def test_trace_estimate_is_the_sample_covariance_trace():
    x = _gaussian(0)
    gram = variance.gram_matrix(x)
    assert variance.trace_covariance(gram) == pytest.approx(np.trace(np.cov(x.T)), rel=1e-10)
    # the pair form used by the bootstrap gives the same number
    d = variance.pair_distances(gram)
    assert d.sum() / (2 * 20 * 19) == pytest.approx(variance.trace_covariance(gram), rel=1e-10)


def test_trace_estimate_and_interval_on_gaussians_with_known_covariance():
    """Vectors ~ N(mu, diag(eig)): tr Cov = sum(eig) = 50. The estimate is unbiased and the 95 %
    bootstrap interval covers the truth in most of 100 seeded draws of m = 20 vectors."""
    eig = np.linspace(0.5, 2.0, 40)
    truth = eig.sum()
    estimates, covered = [], 0
    for seed in range(100):
        res = variance.summarize(variance.gram_matrix(_gaussian(seed, eig=eig)), resamples=500, seed=seed)
        estimates.append(res["trace_cov"])
        covered += res["trace_ci_low"] <= truth <= res["trace_ci_high"]
        assert res["trace_ci_low"] < res["trace_cov"] < res["trace_ci_high"]
    assert np.mean(estimates) == pytest.approx(truth, rel=0.03)
    assert covered >= 85, covered  # nominal 95; about 90-93 in practice at m = 20


def test_relative_variance_and_norms():
    x = _gaussian(1)
    res = variance.summarize(variance.gram_matrix(x), resamples=200)
    norms = np.linalg.norm(x, axis=1)
    assert res["mean_grad_norm"] == pytest.approx(norms.mean())
    assert res["grad_norm_ci_low"] <= res["mean_grad_norm"] <= res["grad_norm_ci_high"]
    assert res["norm_of_mean"] == pytest.approx(np.linalg.norm(x.mean(0)))
    assert res["relative_variance"] == pytest.approx(res["trace_cov"] / (norms ** 2).mean())
    # ||E g||^2 = 40 * 9 = 360 here; its unbiased estimate is close
    assert res["signal_sq_norm"] == pytest.approx(360, rel=0.1)


def test_trace_is_zero_for_identical_vectors_and_bootstrap_is_seeded():
    same = np.tile(np.arange(5.0), (10, 1))
    res = variance.summarize(variance.gram_matrix(same), resamples=200)
    assert res["trace_cov"] == pytest.approx(0, abs=1e-9) and res["trace_ci_high"] == pytest.approx(0, abs=1e-9)
    gram = variance.gram_matrix(_gaussian(2))
    a = variance.bootstrap_trace(gram, 300, seed=7)
    b = variance.bootstrap_trace(gram, 300, seed=7)
    c = variance.bootstrap_trace(gram, 300, seed=8)
    assert a[:2] == b[:2] and a[:2] != c[:2]


def test_countsketch_preserves_inner_products_on_average():
    torch = pytest.importorskip("torch")
    shapes = [torch.Size([20, 30]), torch.Size([400])]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1000, generator=g, dtype=torch.float64) + 0.5
    exact = variance.gram_matrix(x)

    def sketched(seed: int) -> np.ndarray:
        sk = variance.CountSketch(shapes, 8192, seed=seed)
        return variance.gram_matrix(torch.stack([sk.project([v[:600].reshape(20, 30), v[600:]]) for v in x]))

    assert np.array_equal(sketched(3), sketched(3))  # seeded
    mean = np.mean([sketched(s) for s in range(20)], axis=0)
    assert np.allclose(mean, exact, rtol=0.05, atol=5.0)
    assert variance.trace_covariance(sketched(0)) == pytest.approx(variance.trace_covariance(exact), rel=0.1)


# ---------------------------------------------------------------------------------------------
# the paired bootstrap
# ---------------------------------------------------------------------------------------------


def test_bootstrap_identical_systems_give_p_one_and_no_difference():
    a = np.random.default_rng(0).uniform(0, 100, 200)
    res = significance.paired_bootstrap(a, a.copy(), resamples=1000, seed=0)
    assert res["mean_diff"] == 0 and res["p_value"] == 1.0 and res["ci_low"] == res["ci_high"] == 0


def test_bootstrap_clearly_better_system_gives_small_p():
    rng = np.random.default_rng(1)
    base = rng.uniform(0, 80, 300)
    better = base + rng.normal(5, 2, 300)
    res = significance.paired_bootstrap(better, base, resamples=1000, seed=0)
    assert res["p_value"] <= 2 / 1001 + 1e-12 and res["ci_low"] > 0 and res["mean_diff"] == pytest.approx(5, abs=0.5)
    worse = significance.paired_bootstrap(base, better, resamples=1000, seed=0)
    assert worse["p_value"] == res["p_value"] and worse["ci_high"] < 0  # two-sided: symmetric


def test_bootstrap_noise_only_difference_is_not_significant_and_is_seeded():
    rng = np.random.default_rng(2)
    base = rng.uniform(0, 100, 300)
    noisy = base + rng.normal(0, 10, 300) - 0.0
    noisy += base.mean() - noisy.mean()  # exactly no mean difference
    res = significance.paired_bootstrap(noisy, base, resamples=2000, seed=3)
    assert res["p_value"] > 0.5
    again = significance.paired_bootstrap(noisy, base, resamples=2000, seed=3)
    other = significance.paired_bootstrap(noisy, base, resamples=2000, seed=4)
    assert res == again and (res["ci_low"], res["ci_high"]) != (other["ci_low"], other["ci_high"])


def _metrics_file(root: Path, task: str, student: str, method: str, seed: int, scores: dict, metric: float) -> str:
    if method == "teacher":
        path = root / "results" / "metrics" / task / "teacher.json"
    else:
        path = root / "results" / "metrics" / task / student / method / f"seed{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"metrics": {primary_metric("en_nl"): metric, "chrf": 1.0}, "per_example": scores}))
    return str(path)


def test_significance_table_averages_seeds_and_skips_self_comparisons(tmp_path):
    ids = [f"ex{i}" for i in range(50)]
    rng = np.random.default_rng(0)
    base = {i: float(v) for i, v in zip(ids, rng.uniform(0, 50, 50))}
    paths = [_metrics_file(tmp_path, "en_nl", "s", "teacher", 0, {i: v + 30 for i, v in base.items()}, 60.0)]
    for seed in (0, 1):
        paths.append(_metrics_file(tmp_path, "en_nl", "s", "kl", seed, base, 20.0))
        paths.append(_metrics_file(tmp_path, "en_nl", "s", "llmr", seed, {i: v + 2 * seed for i, v in base.items()}, 21.0))
    paths.append(_metrics_file(tmp_path, "en_nl", "s", "sft", 0, base, 20.0))
    table = significance.significance_table(paths, resamples=1000, seed=0)
    assert list(table.columns) == significance.COLUMNS
    assert set(zip(table.method, table.baseline)) == {("teacher", "kl"), ("llmr", "kl"), ("sft", "kl"),
                                                       ("teacher", "llmr"), ("kl", "llmr"), ("sft", "llmr")}
    row = table[(table.method == "llmr") & (table.baseline == "kl")].iloc[0]
    assert row.mean_diff == pytest.approx(1.0) and row.method_seeds == 2 and row.n_examples == 50  # (0 + 2) / 2
    assert table[(table.method == "sft") & (table.baseline == "kl")].p_value.item() == 1.0
    assert table[table.method == "teacher"].significant.all()
    assert (table.metric == "bleu").all() and (table.resamples == 1000).all()


# ---------------------------------------------------------------------------------------------
# main.md / main.tex
# ---------------------------------------------------------------------------------------------


def _main_frame() -> pd.DataFrame:
    rows = []
    values = {"teacher": (60.0, 50.0), "prompted": (1.0, 0.0), "kl": (30.0, 20.0), "llmr": (31.0, 20.004),
              "ketchup": (32.5, 19.0)}
    for method, (bleu, acc) in values.items():
        for student in (["teacher"] if method == "teacher" else ["small", "base"]):
            bump = 1.0 if student == "base" else 0.0
            k = {"llmr": 1, "ketchup": 2}.get(method)
            rows.append({"task": "en_nl", "metric": "bleu", "student": student, "method": method, "k": k,
                         "seeds": 3, "mean": bleu + bump, "std": 0.25})
            rows.append({"task": "en_nl", "metric": "chrf", "student": student, "method": method, "k": k,
                         "seeds": 3, "mean": 99.0, "std": 0.1})
            rows.append({"task": "gsm8k", "metric": "accuracy", "student": student, "method": method,
                         "k": {"llmr": 1, "ketchup": 8}.get(method), "seeds": 3, "mean": acc + bump, "std": float("nan")})
    return pd.DataFrame(rows)


def test_markdown_table_layout_and_best_marked():
    md = tables_paper.markdown(_main_frame(), tasks=["en_nl", "gsm8k"], students=["small", "base"])
    assert "## Student: small" in md and "## Student: base" in md
    assert md.index("## Student: small") < md.index("## Student: base")  # config order, not alphabetical
    small = md.split("## Student: small")[1].split("## Student: base")[0]
    lines = [line for line in small.splitlines() if line.startswith("|")]
    assert lines[0] == "| Method | EN-NL (BLEU) | GSM8K (accuracy) |"
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["Teacher", "Prompted student", "KL", "LLMR", "KETCHUP"]
    assert "| KETCHUP | **32.50 ± 0.25** | 19.00 |" in small  # best BLEU; std shown
    assert "| Teacher | 60.00 ± 0.25 | 50.00 |" in small  # the teacher is never bold
    # GSM8K: KL 20.00 and LLMR 20.004 tie at two decimals: both bold; NaN std shows the mean only
    assert "| KL | 30.00 ± 0.25 | **20.00** |" in small and "| LLMR | 31.00 ± 0.25 | **20.00** |" in small
    assert "chrF" not in md and "99.00" not in md  # primary metric only
    assert "EN-NL 2, GSM8K 8" in md


def test_latex_table_layout_and_best_marked():
    tex = tables_paper.latex(_main_frame(), tasks=["en_nl", "gsm8k"], students=["small", "base"])
    assert tex.count(r"\begin{tabular}{lrr rr}") == 1 and r"\toprule" in tex and r"\bottomrule" in tex
    assert r"\multicolumn{2}{c}{small} & \multicolumn{2}{c}{base}" in tex
    ketchup = next(line for line in tex.splitlines() if line.startswith("KETCHUP"))
    assert ketchup == r"KETCHUP & \textbf{32.50 $\pm$ 0.25} & 19.00 & \textbf{33.50 $\pm$ 0.25} & 20.00 \\"
    teacher = next(line for line in tex.splitlines() if line.startswith("Teacher"))
    assert r"\textbf" not in teacher
    assert "LLMR + mean baseline" not in tex  # only methods present
    assert tex.splitlines().count(r"\midrule") == 2  # after the header, after teacher / prompted


def test_length_counts_match_the_transformers_tokenizer(tmp_path):
    """length_by_k counts tokens with `tokenizers` (fast start); the counts equal AutoTokenizer's."""
    from transformers import AutoTokenizer

    from ketchup.analysis import lengths
    from ketchup.tokenizer import build

    texts = ["the cat sat on the mat", "12 + 30 = 42", "de kat zat op de mat", "", "Ünïcode ×  two  spaces"]
    build([{"source": t, "target": t[::-1]} for t in texts * 20], 120, tmp_path / "tok")
    fast = lengths.token_lengths(texts, lengths._tokenizer(str(tmp_path / "tok")))
    slow = lengths.token_lengths(texts, AutoTokenizer.from_pretrained(tmp_path / "tok"))
    assert list(fast) == list(slow) and fast[3] == 0 and fast[0] > 0
    stats = lengths.describe(np.array([1.0, 2.0, 3.0, 4.0, 0.0]))
    assert stats["median"] == 2.0 and stats["empty_share"] == 0.2 and stats["max"] == 4.0 and stats["n"] == 5


# ---------------------------------------------------------------------------------------------
# K sweep, paper comparison, settings
# ---------------------------------------------------------------------------------------------


def test_k_sweep_table_rows_and_reference_levels(tmp_path):
    paths = []
    for method, value in {"kl": 20.0, "llmr": 21.0, "ketchup": 23.0, "ketchup-k4": 22.0}.items():
        for seed in (0, 1):
            paths.append(_metrics_file(tmp_path, "en_nl", "tiny", method, seed, {}, value + seed))
    table = k_sweep_table(paths, {"en_nl": {"1": "llmr", "2": "ketchup", "4": "ketchup-k4"}}, {"en_nl": 2})
    assert list(table.k) == [1, 2, 4] and list(table.run) == ["llmr", "ketchup", "ketchup-k4"]
    assert list(table["mean"]) == [21.5, 23.5, 22.5] and (table.seeds == 2).all()
    assert list(table.is_task_k) == [False, True, False]
    assert (table.kl_mean == 20.5).all() and (table.llmr_mean == 21.5).all()
    assert table["std"].round(4).eq(0.7071).all()


def test_paper_numbers_file_holds_both_settings():
    numbers = paper_numbers()
    assert set(numbers.setting) == {"t5", "qwen"}
    t5 = numbers[numbers.setting == "t5"].set_index(["task", "method"])["value"]
    assert t5[("xsum", "ketchup")] == 36.03 and t5[("gsm8k", "teacher")] == 40.71 and t5[("en_nl", "kl")] == 22.35
    qwen = numbers[numbers.setting == "qwen"].set_index(["task", "method"])
    assert qwen.loc[("gsm8k", "ketchup"), "value"] == 28.13 and qwen.loc[("gsm8k", "ketchup"), "k"] == 16


def test_paper_comparison_marks_like_for_like_rows(tmp_path):
    main = _main_frame()
    main.loc[main.student == "base", "student"] = "t5base"
    path = tmp_path / "main.csv"
    main.to_csv(path, index=False)
    spec = {"architecture": "seq2seq", "tasks": {"en_nl": {"source": "hub"}, "gsm8k": {"source": "synthetic"}},
            "students": {"small": {"name_or_path": "google-t5/t5-small"}, "t5base": {"name_or_path": "google-t5/t5-base"}},
            "teacher": {"name_or_path": "google/flan-t5-xl"}}
    table = comparison(str(path), spec)
    assert set(table.setting) == {"t5"} and set(table.task) == {"en_nl", "gsm8k"}
    row = table[(table.task == "en_nl") & (table.method == "kl") & (table.student == "t5base")].iloc[0]
    assert row.comparable and row.ours_mean == 31.0 and row.paper == 22.35 and row.difference == pytest.approx(8.65)
    assert not table[(table.task == "en_nl") & (table.student == "small")].comparable.any()
    assert not table[table.task == "gsm8k"].comparable.any()
    assert table[table.task == "gsm8k"].note.str.contains("synthetic task data").all()
    minvar = table[table.method == "llmr-minvar"]
    # A method of the pipeline that this run lacks is named as a missing run, not as a missing method.
    assert len(minvar) == 4 and minvar.ours_mean.isna().all() and minvar.note.str.contains("no such run").all()
    teacher = table[(table.method == "teacher") & (table.task == "en_nl")]
    assert len(teacher) == 1 and teacher.comparable.item()
    decoder = comparison(str(path), {**spec, "architecture": "decoder"})
    assert set(decoder.setting) == {"qwen"} and set(decoder.method) == {"kl", "tvd", "llmr", "ketchup"}


def test_primary_metric_comes_from_the_given_tasks_or_the_preset():
    from ketchup.analysis.common import task_title

    assert [primary_metric(t) for t in ("xsum", "en_nl", "gsm8k")] == ["rouge1", "bleu", "accuracy"]
    info = {"qa": {"primary": "accuracy", "title": "QA"}, "en_nl": {"primary": "chrf", "title": "EN-NL"}}
    assert primary_metric("qa", info) == "accuracy" and task_title("qa", info) == "QA"
    assert primary_metric("en_nl", info) == "chrf"  # the config's definition wins over the preset
    assert task_title("mine") == "mine"
    with pytest.raises(ValueError, match="not a preset"):
        primary_metric("mine")


def test_analysis_settings_and_k_values(default_config):
    assert settings.k_sweep(default_config) == [1, 2, 4, 8]
    assert settings.k_sweep({}) == settings.k_sweep({"analysis": {"k_sweep": []}}) == settings.DEFAULT_K_SWEEP
    assert settings.grad_variance_ks(default_config, "gsm8k") == [1, 2, 4, 8]
    cfg = {**default_config, "analysis": {**default_config.get("analysis", {}), "k_sweep": [2, 3]}}
    assert settings.grad_variance_ks(cfg, "en_nl") == [1, 2, 3, 4]
    cfg["analysis"] = {"k_sweep": [2, 3], "grad_variance": {"k": [5, 1], "n_minibatches": 30}}
    assert settings.grad_variance_ks(cfg, "en_nl") == [1, 5]
    full = settings.analysis_settings(cfg)
    assert full["grad_variance"]["n_minibatches"] == 30 and full["grad_variance"]["resamples"] == 1000
    assert full["bootstrap"]["resamples"] >= 1000
    kconfig.validate(cfg)
    cfg["analysis"] = {"grad_variance": {"n_minibatch": 30}}
    with pytest.raises(kconfig.ConfigError, match="analysis.grad_variance.n_minibatch"):
        kconfig.validate(cfg)
    cfg["analysis"] = {"bootstrap": {"resamples": 10}}
    with pytest.raises(kconfig.ConfigError, match="analysis.bootstrap.resamples"):
        kconfig.validate(cfg)


def test_ppo_equal_time_runs_follow_the_cost_ratio(default_config):
    cfg = {**default_config, "methods": ["kl", "llmr", "ketchup", "llmr-ppo", "ketchup-ppo"],
           "analysis": {"ppo_cost_ratio": 1.5}}
    cfg["method_overrides"] = {**cfg.get("method_overrides", {}), "llmr-ppo": {"max_steps": 30}, "ketchup-ppo": {"max_steps": 40}}
    assert settings.ppo_equal_time(cfg) == {
        "llmr-ppo": {"plain": "llmr", "rollouts": "llmr-ppo", "time": "llmr-ppo-r20"},  # 30 / 1.5
        "ketchup-ppo": {"plain": "ketchup", "rollouts": "ketchup-ppo", "time": "ketchup-ppo-r27"}}  # 40 / 1.5 = 26.7
    kconfig.validate(cfg)
    # the budget run trains its method's settings for N steps, and is its method everywhere else
    assert kconfig.optim_settings(cfg, "ketchup-ppo-r27") == {**kconfig.optim_settings(cfg, "ketchup-ppo"), "max_steps": 27}
    assert kconfig.rl_settings(cfg, "ketchup-ppo-r27") == kconfig.rl_settings(cfg, "ketchup-ppo")
    assert registry.method_and_k("ketchup-ppo-r27", 4) == ("ketchup-ppo", 4)
    assert registry.method_and_k("llmr-ppo-r20", 4) == ("llmr-ppo", 1)
    assert registry.rollout_budget("ketchup") is None and registry.rollout_budget("ketchup-k4") is None
    with pytest.raises(ValueError, match="only an RL method"):
        registry.budget_run("kl", 10)
    with pytest.raises(KeyError):
        registry.method_and_k("kl-r10", 1)
    assert settings.ppo_equal_time(default_config | {"analysis": {}}) == {}  # null: no runs, no table
    with pytest.raises(kconfig.ConfigError, match="analysis.ppo_cost_ratio"):
        kconfig.validate({**cfg, "analysis": {"ppo_cost_ratio": 0}})


def test_equal_time_table_from_metrics_and_step_times(tmp_path, jsonl_writer):
    """Means, stds, rollout batches and summed step seconds, by hand, for two seeds of three runs."""
    scores = {"ketchup": (30.0, 34.0), "ketchup-ppo": (33.0, 35.0), "ketchup-ppo-r2": (31.0, 31.0)}
    step_seconds = {"ketchup": [1.0, 1.0, 1.0], "ketchup-ppo": [1.5, 1.5, 1.5], "ketchup-ppo-r2": [1.5, 1.5]}
    metrics, models = [], []
    for run, values in scores.items():
        for seed, value in enumerate(values):
            path = tmp_path / f"results/metrics/en_nl/base/{run}/seed{seed}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"metrics": {"bleu": value, "chrf": 0.0}}))
            model = tmp_path / f"results/models/students/en_nl/base/{run}/seed{seed}"
            rows = [{"step": 0, "dev_metric": 1.0}]
            for step, sec in enumerate(step_seconds[run], 1):  # seed 1 took twice as long
                rows += [{"step": step, "loss": 0.1, "seconds": sec * (1 + seed)}, {"step": step, "dev_metric": 2.0}]
            jsonl_writer(model / "metrics.jsonl", rows)
            metrics.append(str(path))
            models.append(str(model))
    comparisons = {"ketchup-ppo": {"plain": "ketchup", "rollouts": "ketchup-ppo", "time": "ketchup-ppo-r2"}}
    assert train_time(models[1]) == (3, 6.0)
    table = equal_time_table(metrics, models, comparisons).set_index("budget")
    assert list(table.index) == ["plain", "rollouts", "time"] and (table.method == "ketchup-ppo").all()
    assert list(table.run) == ["ketchup", "ketchup-ppo", "ketchup-ppo-r2"] and (table.seeds == 2).all()
    assert list(table.rollout_batches) == [3, 3, 2] and (table.metric == "bleu").all()
    assert list(table.train_s) == [4.5, 6.75, 4.5]  # mean over seeds of (3 x s, 6 x s)
    assert list(table.time_vs_plain) == [1.0, 1.5, 1.0]
    assert list(table["mean"]) == [32.0, 34.0, 31.0] and list(table.diff_vs_plain) == [0.0, 2.0, -1.0]
    assert table.loc["plain", "std"] == pytest.approx(np.std([30.0, 34.0], ddof=1), abs=1e-4)
    assert table.loc["time", "std"] == 0.0


# ---------------------------------------------------------------------------------------------
# figures (pure functions: DataFrame -> Figure)
# ---------------------------------------------------------------------------------------------


def _assert_labelled(fig: Figure) -> None:
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert visible
    for ax in visible:
        assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
        if ax.lines or ax.collections:
            assert ax.get_legend() is not None
    assert fig.get_suptitle()


def test_figures_have_labelled_axes_titles_and_legends():
    sweep = pd.DataFrame({"task": "en_nl", "metric": "bleu", "student": ["a", "a", "b", "b"], "k": [1, 2, 1, 2],
                          "run": ["llmr", "ketchup"] * 2, "is_task_k": [False, True] * 2, "seeds": 1,
                          "mean": [1.0, 2.0, 3.0, 4.0], "std": np.nan, "kl_mean": 0.5, "kl_std": np.nan,
                          "llmr_mean": 1.0, "llmr_std": np.nan})
    fig = figures.k_sweep_figure(sweep)
    _assert_labelled(fig)
    assert len(fig.axes) == 2 and "BLEU" in fig.axes[0].get_ylabel() and "K" in fig.axes[0].get_xlabel()
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert {"KL", "LLMR", "KETCHUP (K)"} <= set(labels)

    gv = pd.DataFrame({"task": "gsm8k", "student": "a", "seed": 0, "k": [1, 2, 4], "trace_cov": [3.0, 2.0, 1.0],
                       "trace_ci_low": [2.0, 1.5, 0.5], "trace_ci_high": [4.0, 2.5, 1.5],
                       "relative_variance": [0.9, 0.8, 0.7], "mean_grad_norm": [1.0, 0.9, 0.8],
                       "grad_norm_ci_low": [0.9, 0.8, 0.7], "grad_norm_ci_high": [1.1, 1.0, 0.9], "confidence": 0.95})
    fig = figures.grad_variance_figure(gv)
    _assert_labelled(fig)
    assert len(fig.axes) == 3 and fig.axes[0].get_yscale() == "log"

    size = pd.DataFrame({"task": "gsm8k", "metric": "accuracy", "student": ["s", "b", "s", "b", "teacher"],
                         "params": [1_000_000, 3_000_000, 1_000_000, 3_000_000, 9_000_000],
                         "method": ["kl", "kl", "ketchup", "ketchup", "teacher"], "seeds": 1,
                         "mean": [1.0, 2.0, 1.5, 3.0, 9.0], "std": np.nan})
    fig = figures.student_size_figure(size)
    _assert_labelled(fig)
    assert "parameters" in fig.axes[0].get_xlabel() and "accuracy (%)" == fig.axes[0].get_ylabel()

    curves = pd.DataFrame({"task": "en_nl", "student": "a", "method": ["kl"] * 4 + ["llmr"] * 2,
                           "step": [0, 1, 1, 2, 0, 1], "series": ["dev_metric", "loss", "dev_metric", "loss",
                                                                  "dev_metric", "loss"],
                           "value": [1.0, 2.0, 3.0, 1.5, 3.0, -0.5], "seeds": 1})
    fig = figures.training_curves_figure(curves)
    _assert_labelled(fig)
    assert len(fig.axes) == 2 and fig.axes[1].get_yscale() == "symlog"

    for empty in (figures.k_sweep_figure, figures.grad_variance_figure, figures.student_size_figure,
                  figures.training_curves_figure):
        _assert_labelled(empty(pd.DataFrame()))


def test_save_writes_pdf_and_png(tmp_path):
    fig = figures.k_sweep_figure(pd.DataFrame())
    figures.save(fig, tmp_path / "f.pdf", tmp_path / "f.png")
    assert (tmp_path / "f.pdf").read_bytes()[:4] == b"%PDF"
    assert matplotlib.image.imread(tmp_path / "f.png").ndim == 3


# ---------------------------------------------------------------------------------------------
# the DAG
# ---------------------------------------------------------------------------------------------


def _job_counts(out: str) -> dict[str, int]:
    counts = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts.setdefault(parts[0], int(parts[1]))
    return counts


def test_default_all_includes_every_analysis(tmp_path):
    proc = snakemake(tmp_path, None, "-n", "all")
    counts = _job_counts(proc.stdout + proc.stderr)
    # 72 main-table students (12 methods x 3 tasks x 2 sizes) + the K sweep's extra runs: K in {1, 2, 4, 8},
    # K = 1 reuses llmr and the task's K (2 / 4 / 8) reuses ketchup, so two extra K per task: 3 tasks x 2 K
    # x 2 sizes = 12 + the equal-time runs llmr-ppo-r27 and ketchup-ppo-r27: 2 x 3 tasks x 2 sizes = 12
    assert counts["student"] == 96 and counts["score_student"] == 96
    assert counts["grad_variance"] == 6  # 3 tasks x 2 sizes x 1 seed
    for rule in ("k_sweep_table", "k_sweep_figure", "grad_variance_table", "grad_variance_figure", "length_by_k",
                 "significance", "main_table_paper_layout", "paper_comparison", "student_size_table",
                 "student_size_figure", "training_curves", "main_table", "equal_time_table"):
        assert counts[rule] == 1, rule
    assert not (tmp_path / "results").exists()


# ---------------------------------------------------------------------------------------------
# end to end: every analysis target on a reduced test config, then the report
# ---------------------------------------------------------------------------------------------

TARGETS = ["results/tables/k_sweep.csv", "results/figures/k_sweep.pdf", "results/figures/k_sweep.png",
           "results/tables/grad_variance.csv", "results/figures/grad_variance.pdf",
           "results/figures/grad_variance.png", "results/figures/student_size.pdf",
           "results/figures/student_size.png", "results/tables/length_by_k.csv",
           "results/figures/training_curves.pdf", "results/figures/training_curves.png", "results/tables/main.md",
           "results/tables/main.tex", "results/tables/significance.csv", "results/tables/paper_comparison.csv",
           "results/tables/equal_time.csv"]
E2E_METHODS = ["kl", "llmr", "ketchup"]  # the prompted row's layout is unit-tested above
E2E_PPO = "ketchup-ppo"  # with analysis.ppo_cost_ratio 2: also ketchup-ppo-r5, at half the rollouts


@pytest.fixture(scope="module")
def analysis_run(tmp_path_factory):
    """One task, one student, three methods and ketchup-ppo, k_sweep [1, 2, 3] (K = 1 reuses llmr, 2 is
    the task's K and reuses ketchup, 3 trains ketchup-k3), ppo_cost_ratio 2 (ketchup-ppo-r5), a short
    teacher: every analysis target, then the report."""
    tmp = tmp_path_factory.mktemp("analysis")
    base = yaml.safe_load(TEST_CONFIG.read_text())
    task = {**base["tasks"]["en_nl"], "n_train": 200, "n_dev": 20, "n_test": 30}
    config = write_config(
        tmp / "config.yaml", TEST_CONFIG, tasks={"en_nl": task}, methods=[*E2E_METHODS, E2E_PPO],
        teacher={**base["teacher"], "train": {**base["teacher"]["train"], "max_steps": 60, "eval_every": 30}},
        train={**base["train"], "max_steps": 10, "eval_every": 5, "dev_eval_examples": 10, "checkpoint_every": 10},
        analysis={"k_sweep": [1, 2, 3], "grad_variance": {"n_minibatches": 20, "batch_size": 4, "resamples": 500},
                  "bootstrap": {"resamples": 1000, "seed": 0}, "ppo_cost_ratio": 2.0},
    )
    workdir = tmp / "work"
    snakemake(workdir, config, *TARGETS, timeout=900)
    report = snakemake(workdir, config, "--report", "results/report.html", timeout=300)
    return workdir, report


def _table(run, name: str) -> pd.DataFrame:
    """A table of the end-to-end run (``run``: the fixture's value, or its working directory)."""
    workdir = run if isinstance(run, Path) else run[0]
    return pd.read_csv(workdir / "results" / "tables" / name)


@pytest.mark.slow
def test_e2e_k_sweep(analysis_run):
    table = _table(analysis_run, "k_sweep.csv")
    assert list(table.columns) == ["task", "metric", "student", "k", "run", "is_task_k", "seeds", "mean", "std",
                                   "kl_mean", "kl_std", "llmr_mean", "llmr_std"]
    assert list(table.k) == [1, 2, 3] and list(table.run) == ["llmr", "ketchup", "ketchup-k3"]
    assert list(table.is_task_k) == [False, True, False]
    assert table["mean"].between(0, 100).all() and table.kl_mean.notna().all() and table.llmr_mean.notna().all()
    main = _table(analysis_run, "main.csv").set_index(["method", "metric"])["mean"]
    assert table.set_index("run").loc["ketchup", "mean"] == pytest.approx(main[("ketchup", "bleu")], abs=1e-3)
    assert table.kl_mean.iloc[0] == pytest.approx(main[("kl", "bleu")], abs=1e-3)
    summary = json.loads((analysis_run[0] / "results/models/students/en_nl/tiny/ketchup-k3/seed0/train_summary.json")
                         .read_text())
    assert summary["k"] == 3 and summary["method"] == "ketchup"
    assert not (analysis_run[0] / "results/models/students/en_nl/tiny/ketchup-k1").exists()


@pytest.mark.slow
def test_e2e_grad_variance(analysis_run):
    table = _table(analysis_run, "grad_variance.csv")
    assert list(table.k) == [1, 2, 3] and (table.n_minibatches == 20).all() and (table.batch_size == 4).all()
    assert (table.projection == "exact").all() and (table.dim == table.params).all()
    assert (table.trace_cov > 0).all() and (table.trace_ci_low <= table.trace_cov).all()
    assert (table.trace_cov <= table.trace_ci_high).all() and (table.trace_ci_low > 0).all()
    assert table.relative_variance.between(0, 1.2).all() and (table.mean_grad_norm > 0).all()
    run = json.loads((analysis_run[0] / "results/analysis/grad_variance/en_nl/tiny/seed0.json").read_text())
    for row in run["rows"]:  # the table's numbers follow from the stored Gram matrices
        gram = np.array(row["gram"])
        assert gram.shape == (20, 20) and variance.trace_covariance(gram) == pytest.approx(row["trace_cov"])


@pytest.mark.slow
def test_e2e_length_by_k(analysis_run):
    table = _table(analysis_run, "length_by_k.csv")
    assert list(table.k) == [1, 2, 3] and (table.unit == "tokens").all() and (table.n == 30).all()
    assert (table["min"] <= table.q25).all() and (table.q25 <= table["median"]).all()
    assert (table["median"] <= table.q75).all() and (table.q75 <= table["max"]).all()
    assert (table["max"] <= 40).all() and (table.reference_mean > 0).all()


@pytest.mark.slow
def test_e2e_significance(analysis_run):
    table = _table(analysis_run, "significance.csv")
    assert list(table.columns) == significance.COLUMNS
    # every run (teacher, kl, llmr, ketchup, ketchup-ppo, ketchup-ppo-r5) against kl, llmr and ketchup,
    # never against itself: 3 x 5 rows
    assert len(table) == 15 and not (table.method == table.baseline).any()
    assert set(table.baseline) == {"kl", "llmr", "ketchup"} and table.p_value.between(0, 1).all()
    assert set(table[table.baseline == "ketchup"].method) == {"teacher", "kl", "llmr", E2E_PPO, f"{E2E_PPO}-r5"}
    assert (table.n_examples == 30).all() and (table.resamples == 1000).all()
    assert (table.ci_low <= table.mean_diff).all() and (table.mean_diff <= table.ci_high).all()


@pytest.mark.slow
def test_e2e_equal_time(analysis_run):
    table = _table(analysis_run, "equal_time.csv").set_index("budget")
    assert list(table.run) == ["ketchup", E2E_PPO, f"{E2E_PPO}-r5"] and list(table.rollout_batches) == [10, 10, 5]
    assert (table.train_s > 0).all() and table.loc["plain", "time_vs_plain"] == 1.0
    main = _table(analysis_run, "main.csv").set_index(["method", "metric"])["mean"]
    assert table.loc["rollouts", "mean"] == pytest.approx(main[(E2E_PPO, "bleu")], abs=1e-3)
    summary = json.loads((analysis_run[0] / f"results/models/students/en_nl/tiny/{E2E_PPO}-r5/seed0/train_summary.json")
                         .read_text())
    assert summary["steps"] == 5 and summary["method"] == E2E_PPO


@pytest.mark.slow
def test_e2e_main_md_and_tex(analysis_run):
    md = (analysis_run[0] / "results/tables/main.md").read_text()
    tex = (analysis_run[0] / "results/tables/main.tex").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| Method")]
    assert [r.split("|")[1].strip() for r in rows] == ["Teacher", "KL", "LLMR", "KETCHUP", "KETCHUP + PPO"]
    assert md.count("**") >= 2 and md.count("**") % 2 == 0  # the best cell (and any tie) in the one column
    assert tex.count(r"\textbf{") >= 1 and r"\begin{tabular}" in tex and "EN-NL (BLEU)" in tex


@pytest.mark.slow
def test_e2e_paper_comparison(analysis_run):
    table = _table(analysis_run, "paper_comparison.csv")
    assert set(table.task) == {"en_nl"} and set(table.setting) == {"t5"}
    assert not table.comparable.any()  # synthetic data, tiny models
    ours = table[table.method.isin(E2E_METHODS + ["teacher"])]
    assert ours.ours_mean.notna().all() and (ours.difference == (ours.ours_mean - ours.paper).round(4)).all()
    assert table[table.method == "js"].ours_mean.isna().all()


@pytest.mark.slow
def test_e2e_figures_and_report(analysis_run):
    workdir, report = analysis_run
    for name in ("k_sweep", "grad_variance", "student_size", "training_curves"):
        pdf = workdir / "results" / "figures" / f"{name}.pdf"
        png = workdir / "results" / "figures" / f"{name}.png"
        assert pdf.read_bytes()[:4] == b"%PDF" and pdf.stat().st_size > 1000
        image = matplotlib.image.imread(png)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
    sizes = _table(workdir, "student_size.csv")
    assert (sizes[sizes.method != "teacher"].params > 0).all()
    curves = _table(workdir, "training_curves.csv")
    assert set(curves.method) == {*E2E_METHODS, E2E_PPO} and set(curves.series) == {"loss", "dev_metric"}
    html = (workdir / "results" / "report.html")
    assert html.exists() and html.stat().st_size > 10_000
    text = html.read_text(errors="replace")
    for name in ("k_sweep.png", "grad_variance.png", "student_size.png", "training_curves.png"):
        assert name in text, name
