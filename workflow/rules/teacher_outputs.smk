# The teacher's greedy outputs per split: SeqKD / KL pseudo-targets (train) and the teacher row (test).


rule teacher_outputs:
    input:
        model=paths.teacher_model("{task}"),
        data=paths.data("{task}", "{split}"),
    output:
        paths.teacher_outputs("{task}", "{split}"),
    params:
        prompt=lambda wildcards: task_cfg(wildcards.task).get("prompt", ""),
        task_def=lambda wildcards: as_json(task_def(wildcards.task, ktasks.READ_KEYS)),
        generation=lambda wildcards: as_json(kconfig.generation_settings(config, wildcards.task)),
        max_source_length=lambda wildcards: lengths(wildcards.task)[0],
        arch=ARCH,
        dtype=kconfig.teacher_dtype_name(config),
    log:
        "results/logs/teacher_outputs/{task}/{split}.log",
    benchmark:
        "results/benchmarks/teacher_outputs/{task}/{split}.tsv"
    priority: 10
    threads: 1
    conda:
        "../../envs/ketchup.yaml"
    shell:
        "python -m ketchup --threads {threads} generate --teacher --teacher-dtype {params.dtype} --task {wildcards.task} --task-spec {params.task_def:q} --arch {params.arch} --model {input.model} --data {input.data} --prompt={params.prompt:q} --generation {params.generation:q} --max-source-length {params.max_source_length} --out {output} > {log} 2>&1"
