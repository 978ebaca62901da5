# Greedy test-set predictions of each student.


rule predict:
    input:
        model="results/models/students/{task}/{student}/{method}/seed{seed}",
        data="results/data/{task}/test.jsonl",
    output:
        "results/predictions/{task}/{student}/{method}/seed{seed}.jsonl",
    params:
        prompt=lambda wildcards: task_cfg(wildcards.task).get("prompt", ""),
        generation=as_json(kconfig.generation_settings(config)),
        max_source_length=lambda wildcards: lengths(wildcards.task)[0],
        arch=ARCH,
    log:
        "results/logs/predict/{task}/{student}/{method}/seed{seed}.log",
    benchmark:
        "results/benchmarks/predict/{task}/{student}/{method}/seed{seed}.tsv"
    threads: 1
    conda:
        "../../envs/ketchup.yaml"
    shell:
        "python -m ketchup --threads {threads} generate --task {wildcards.task} --arch {params.arch} --model {input.model} --data {input.data} --prompt={params.prompt:q} --generation {params.generation:q} --max-source-length {params.max_source_length} --out {output} > {log} 2>&1"
