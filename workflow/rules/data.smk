# Task data in the hub schema: synthetic (seeded), from the hub by name, or local JSONL (its split
# files are the rule's inputs, so editing one reruns the rule and everything downstream).


rule data:
    input:
        lambda wildcards: LOCAL_FILES[wildcards.task],
    output:
        [paths.data("{task}", split) for split in SPLITS],
    params:
        spec=lambda wildcards: as_json(task_cfg(wildcards.task)),
        seed=DATA_SEED,
        outdir=lambda wildcards: paths.data_dir(wildcards.task),
    log:
        "results/logs/data/{task}.log",
    benchmark:
        "results/benchmarks/data/{task}.tsv"
    priority: 10  # upstream of the teachers (workflow/rules/teacher.smk)
    conda:
        "../../envs/ketchup.yaml"
    shell:
        "python -m ketchup data --task {wildcards.task} --spec {params.spec:q} --seed {params.seed} --out {params.outdir} > {log} 2>&1"
