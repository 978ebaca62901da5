# Students per task, size, method and seed, all through the one training loop. RL methods start
# from the KL student of the same task, size and seed (a DAG edge). Each job ends with the dev-best
# model's greedy test predictions: in the same process, since a prediction job of its own spent
# most of its time importing torch.


rule student:
    input:
        data=[paths.data("{task}", split) for split in SPLITS],
        teacher_outputs=paths.teacher_outputs("{task}", "train"),
        teacher=paths.teacher_model("{task}"),
        init=student_init,
    output:
        model=directory(paths.student_model("{task}", "{student}", "{method}", "{seed}")),
        predictions=paths.predictions("{task}", "{student}", "{method}", "{seed}"),
    params:
        processes=job_processes("student"),
        spec=student_spec,
        datadir=lambda wildcards: paths.data_dir(wildcards.task),
        outputs_dir=lambda wildcards: paths.teacher_outputs_dir(wildcards.task),
        init=lambda wildcards, input: f"--init {input.init}" if input.init else "",
        checkpoints=lambda w: paths.student_checkpoints(w.task, w.student, w.method, w.seed),
    log:
        "results/logs/student/{task}/{student}/{method}/seed{seed}.log",
    benchmark:
        "results/benchmarks/student/{task}/{student}/{method}/seed{seed}.tsv"
    threads: 1
    resources:
        gpu=job_processes("student"),
    conda:
        "../../envs/ketchup.yaml"
    shell:
        "python -m ketchup.launch --processes {params.processes} -m ketchup --threads {threads} student --spec {params.spec:q} --data {params.datadir} --teacher-outputs {params.outputs_dir} --teacher {input.teacher} {params.init} --checkpoints {params.checkpoints} --out {output.model} --predictions {output.predictions} > {log} 2>&1"
