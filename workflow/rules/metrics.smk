# Task metrics per prediction file: ROUGE (rouge-score), BLEU / chrF (sacrebleu), GSM8K accuracy.


rule score_student:
    input:
        "results/predictions/{task}/{student}/{method}/seed{seed}.jsonl",
    output:
        "results/metrics/{task}/{student}/{method}/seed{seed}.json",
    log:
        "results/logs/score/{task}/{student}/{method}/seed{seed}.log",
    benchmark:
        "results/benchmarks/score/{task}/{student}/{method}/seed{seed}.tsv"
    conda:
        "../../envs/ketchup.yaml"
    shell:
        "python -m ketchup score --task {wildcards.task} --predictions {input} --out {output} > {log} 2>&1"


rule score_teacher:
    input:
        "results/teacher_outputs/{task}/test.jsonl",
    output:
        "results/metrics/{task}/teacher.json",
    log:
        "results/logs/score/{task}/teacher.log",
    benchmark:
        "results/benchmarks/score/{task}/teacher.tsv"
    conda:
        "../../envs/ketchup.yaml"
    shell:
        "python -m ketchup score --task {wildcards.task} --predictions {input} --out {output} > {log} 2>&1"
