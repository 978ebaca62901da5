# LLM-judge evaluation (off by default): per-run 1-10 scores on three criteria, pairwise verdicts
# against judge.baseline in both orders, then results/tables/llm_judge.csv and
# results/figures/llm_judge.{pdf,png}. Not part of `all`: ask for the targets by name.
#
# The API key is read by the jobs from the environment variable named by judge.api_key_env; it is
# never a param, never in a command line, log, output or cache entry. Replies are cached under
# results/judge/cache/ (content-addressed), so a rerun makes no request for finished judgements.
# Requests ask for structured output (response_format) unless the server refuses it; an unparseable
# reply gets one repair turn (prompts/repair.txt). Each job's summary JSON says what it asked and
# spent (this_run), and llm_judge.csv sums requests, repair turns and tokens per method.

# At most one judge job calls the API at a time (each keeps judge.concurrency requests in flight),
# so the cap holds for the whole run. `--resources llm_judge_api=N` allows N jobs at once.
if "llm_judge_api" not in workflow.global_resources:
    workflow.register_resource("llm_judge_api", 1)


rule judge_scores:
    wildcard_constraints:
        method=JUDGE_METHOD,
    input:
        predictions=judged_predictions,
        templates=[str(JUDGE_PROMPTS / f) for f in ("system.txt", "score.txt", "repair.txt")],
    output:
        scores=paths.judge_file("{task}", "{student}", "{method}", "{seed}", "scores.jsonl"),
        summary=paths.judge_file("{task}", "{student}", "{method}", "{seed}", "scores.summary.json"),
    params:
        spec=JUDGE_SPEC,
        cache=JUDGE_CACHE,
    log:
        "results/logs/judge/scores/{task}/{student}/{method}/seed{seed}.log",
    benchmark:
        "results/benchmarks/judge/scores/{task}/{student}/{method}/seed{seed}.tsv"
    resources:
        llm_judge_api=1,
    conda:
        "../../envs/ketchup.yaml"
    shell:
        "python -m ketchup judge-score --task {wildcards.task} --spec {params.spec:q} --predictions {input.predictions} --cache-dir {params.cache} --out {output.scores} > {log} 2>&1"


rule judge_pairwise:
    wildcard_constraints:
        method=JUDGE_METHOD,
    input:
        predictions=judged_predictions,
        baseline=baseline_predictions,
        templates=[str(JUDGE_PROMPTS / f) for f in ("system.txt", "pairwise.txt", "repair.txt")],
    output:
        pairwise=paths.judge_file("{task}", "{student}", "{method}", "{seed}", "pairwise.jsonl"),
        summary=paths.judge_file("{task}", "{student}", "{method}", "{seed}", "pairwise.summary.json"),
    params:
        spec=JUDGE_SPEC,
        cache=JUDGE_CACHE,
        baseline=JUDGE_BASELINE,
    log:
        "results/logs/judge/pairwise/{task}/{student}/{method}/seed{seed}.log",
    benchmark:
        "results/benchmarks/judge/pairwise/{task}/{student}/{method}/seed{seed}.tsv"
    resources:
        llm_judge_api=1,
    conda:
        "../../envs/ketchup.yaml"
    shell:
        "python -m ketchup judge-pairwise --task {wildcards.task} --spec {params.spec:q} --predictions {input.predictions} --baseline-predictions {input.baseline} --baseline {params.baseline} --cache-dir {params.cache} --out {output.pairwise} > {log} 2>&1"


rule judge_table:
    input:
        unpack(judge_table_inputs),
    output:
        paths.table("llm_judge.csv"),
    log:
        "results/logs/judge/table.log",
    benchmark:
        "results/benchmarks/judge/table.tsv"
    conda:
        "../../envs/ketchup.yaml"
    shell:
        "python -m ketchup judge-table --scores {input.scores} --pairwise {input.pairwise} --out {output} > {log} 2>&1"


rule judge_figure:
    input:
        paths.table("llm_judge.csv"),
    output:
        pdf=paths.figure("llm_judge", "pdf"),
        png=paths.figure("llm_judge", "png"),
    log:
        "results/logs/judge/figure.log",
    benchmark:
        "results/benchmarks/judge/figure.tsv"
    conda:
        "../../envs/ketchup.yaml"
    shell:
        "python -m ketchup judge-figure --csv {input} --pdf {output.pdf} --png {output.png} > {log} 2>&1"
