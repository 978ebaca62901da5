# Task-adaptive pretraining of the student sizes that have a pretrain block: span corruption
# (seq2seq) or next-token prediction (decoder-only) on the task's training text, through the one
# training loop; the checkpoint with the lowest held-out loss is kept. Resumable like every training
# job (checkpoints under results/checkpoints/). Its students wait on it, as on the teacher: first
# among the ready jobs (priority 10, workflow/rules/teacher.smk).


rule pretrain:
    input:
        data=paths.data("{task}", "train"),
        tokenizer=tokenizer_input,
    output:
        directory(paths.pretrained_model("{task}", "{student}")),
    params:
        processes=job_processes("pretrain"),
        spec=pretrain_spec,
        tokenizer=tokenizer_source,
        checkpoints=lambda wildcards: paths.pretrained_checkpoints(wildcards.task, wildcards.student),
    log:
        "results/logs/pretrain/{task}/{student}.log",
    benchmark:
        "results/benchmarks/pretrain/{task}/{student}.tsv"
    priority: 10
    threads: 1
    resources:
        gpu=job_processes("pretrain"),
    conda:
        "../../envs/ketchup.yaml"
    shell:
        "python -m ketchup.launch --processes {params.processes} -m ketchup --threads {threads} pretrain --spec {params.spec:q} --data {input.data} --tokenizer {params.tokenizer} --checkpoints {params.checkpoints} --out {output} > {log} 2>&1"
