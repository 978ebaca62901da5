# A BPE tokenizer trained on the task's train split (default config); paper configs use the teacher's.
# With seq2seq students to pretrain, it ends with the sentinel tokens of span corruption.


rule tokenizer:
    input:
        paths.data("{task}", "train"),
    output:
        directory(paths.tokenizer("{task}")),
    params:
        prompt=lambda wildcards: task_cfg(wildcards.task).get("prompt", ""),
        task_def=lambda wildcards: as_json(task_def(wildcards.task, ktasks.READ_KEYS)),
        vocab_size=kconfig.tokenizer_settings(config)["vocab_size"],
        datadir=lambda wildcards: paths.data_dir(wildcards.task),
        calculator=lambda wildcards: "--calculator" if kconfig.calculator_on(config, wildcards.task) else "",
        sentinels=f"--sentinels {tokenizer_sentinels()}" if tokenizer_sentinels() else "",
    log:
        "results/logs/tokenizer/{task}.log",
    benchmark:
        "results/benchmarks/tokenizer/{task}.tsv"
    priority: 10  # upstream of the teachers (workflow/rules/teacher.smk)
    conda:
        "../../envs/ketchup.yaml"
    shell:
        "python -m ketchup tokenizer --task {wildcards.task} --task-spec {params.task_def:q} --data {params.datadir} --prompt={params.prompt:q} --vocab-size {params.vocab_size} {params.calculator} {params.sentinels} --out {output} > {log} 2>&1"
