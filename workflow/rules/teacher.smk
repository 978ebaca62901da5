# Teacher fine-tuning on ground truth; the dev-best checkpoint is kept. Resumable: the rolling
# checkpoint lives under results/checkpoints/, outside the declared output. Teachers, the data and
# tokenizer jobs before them and the teacher outputs after them go before any ready student
# (priority 10): every student waits on them, and a teacher started late leaves cores idle at the end.


rule teacher:
    input:
        data=[paths.data("{task}", split) for split in SPLITS],
        tokenizer=tokenizer_input,
    output:
        directory(paths.teacher_model("{task}")),
    params:
        spec=teacher_spec,
        tokenizer=tokenizer_source,
        datadir=lambda wildcards: paths.data_dir(wildcards.task),
        checkpoints=lambda wildcards: paths.teacher_checkpoints(wildcards.task),
    log:
        "results/logs/teacher/{task}.log",
    benchmark:
        "results/benchmarks/teacher/{task}.tsv"
    priority: 10
    threads: 1
    resources:
        runtime=teacher_resource("runtime"),
        mem_mb=teacher_resource("mem_mb"),
    conda:
        "../../envs/ketchup.yaml"
    shell:
        "python -m ketchup --threads {threads} teacher --spec {params.spec:q} --data {params.datadir} --tokenizer {params.tokenizer} --checkpoints {params.checkpoints} --out {output} > {log} 2>&1"
