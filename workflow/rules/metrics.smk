# Task metrics per prediction file, as the task declares them (ketchup.tasks): ROUGE (rouge-score),
# BLEU / chrF (sacrebleu), exact-match accuracy.


rule score_student:
    input:
        paths.predictions("{task}", "{student}", "{method}", "{seed}"),
    output:
        paths.metrics("{task}", "{student}", "{method}", "{seed}"),
    params:
        task_def=lambda wildcards: as_json(task_def(wildcards.task, ktasks.SCORE_KEYS)),
    log:
        "results/logs/score/{task}/{student}/{method}/seed{seed}.log",
    benchmark:
        "results/benchmarks/score/{task}/{student}/{method}/seed{seed}.tsv"
    conda:
        "../../envs/ketchup.yaml"
    shell:
        "python -m ketchup score --task {wildcards.task} --task-spec {params.task_def:q} --predictions {input} --out {output} > {log} 2>&1"


rule score_teacher:
    input:
        paths.teacher_outputs("{task}", "test"),
    output:
        paths.teacher_metrics("{task}"),
    params:
        task_def=lambda wildcards: as_json(task_def(wildcards.task, ktasks.SCORE_KEYS)),
    log:
        "results/logs/score/{task}/teacher.log",
    benchmark:
        "results/benchmarks/score/{task}/teacher.tsv"
    conda:
        "../../envs/ketchup.yaml"
    shell:
        "python -m ketchup score --task {wildcards.task} --task-spec {params.task_def:q} --predictions {input} --out {output} > {log} 2>&1"
