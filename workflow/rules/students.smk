# Students per task, size, method and seed, all through the one training loop. RL methods start
# from the KL student of the same task, size and seed (a DAG edge). Each job ends with the dev-best
# model's greedy test predictions: in the same process, since a prediction job of its own spent
# most of its time importing torch.


rule student:
    input:
        data=expand("results/data/{{task}}/{split}.jsonl", split=SPLITS),
        teacher_outputs="results/teacher_outputs/{task}/train.jsonl",
        teacher="results/models/teacher/{task}",
        init=student_init,
    output:
        model=directory("results/models/students/{task}/{student}/{method}/seed{seed}"),
        predictions="results/predictions/{task}/{student}/{method}/seed{seed}.jsonl",
    params:
        spec=student_spec,
        datadir=lambda wildcards: f"results/data/{wildcards.task}",
        outputs_dir=lambda wildcards: f"results/teacher_outputs/{wildcards.task}",
        init=lambda wildcards, input: f"--init {input.init}" if input.init else "",
        checkpoints=lambda wildcards: f"results/checkpoints/students/{wildcards.task}/{wildcards.student}/{wildcards.method}/seed{wildcards.seed}",
    log:
        "results/logs/student/{task}/{student}/{method}/seed{seed}.log",
    benchmark:
        "results/benchmarks/student/{task}/{student}/{method}/seed{seed}.tsv"
    threads: 1
    conda:
        "../../envs/ketchup.yaml"
    shell:
        "python -m ketchup --threads {threads} student --spec {params.spec:q} --data {params.datadir} --teacher-outputs {params.outputs_dir} --teacher {input.teacher} {params.init} --checkpoints {params.checkpoints} --out {output.model} --predictions {output.predictions} > {log} 2>&1"
