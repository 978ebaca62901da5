# Task metrics per prediction file: ROUGE (rouge-score), BLEU / chrF (sacrebleu), GSM8K accuracy.


rule score_student:
    input:
        paths.predictions("{task}", "{student}", "{method}", "{seed}"),
    output:
        paths.metrics("{task}", "{student}", "{method}", "{seed}"),
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
        paths.teacher_outputs("{task}", "test"),
    output:
        paths.teacher_metrics("{task}"),
    log:
        "results/logs/score/{task}/teacher.log",
    benchmark:
        "results/benchmarks/score/{task}/teacher.tsv"
    conda:
        "../../envs/ketchup.yaml"
    shell:
        "python -m ketchup score --task {wildcards.task} --predictions {input} --out {output} > {log} 2>&1"
