# Teacher fine-tuning on ground truth; the dev-best checkpoint is kept. Resumable: the rolling
# checkpoint lives under results/checkpoints/, outside the declared output. Teachers, the data and
# tokenizer jobs before them and the teacher outputs after them go before any ready student
# (priority 10): every student waits on them, and a teacher started late leaves cores idle at the end.


rule teacher:
    input:
        data=expand("results/data/{{task}}/{split}.jsonl", split=SPLITS),
        tokenizer=tokenizer_input,
    output:
        directory("results/models/teacher/{task}"),
    params:
        spec=teacher_spec,
        tokenizer=tokenizer_source,
        datadir=lambda wildcards: f"results/data/{wildcards.task}",
        checkpoints=lambda wildcards: f"results/checkpoints/teacher/{wildcards.task}",
    log:
        "results/logs/teacher/{task}.log",
    benchmark:
        "results/benchmarks/teacher/{task}.tsv"
    priority: 10
    threads: 1
    conda:
        "../../envs/ketchup.yaml"
    shell:
        "python -m ketchup --threads {threads} teacher --spec {params.spec:q} --data {params.datadir} --tokenizer {params.tokenizer} --checkpoints {params.checkpoints} --out {output} > {log} 2>&1"
