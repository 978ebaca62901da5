# The paper's main table in tidy form: task, metric, student, method, k, seeds, mean, std.


rule main_table:
    input:
        teacher=expand("results/metrics/{task}/teacher.json", task=TASKS),
        students=student_metric_files(),
    output:
        main="results/tables/main.csv",
        check="results/tables/teacher_vs_untrained.csv",
    params:
        task_k=as_json({task: task_cfg(task).get("k", 1) for task in TASKS}),
    log:
        "results/logs/tables/main.log",
    benchmark:
        "results/benchmarks/tables/main.tsv"
    conda:
        "../../envs/ketchup.yaml"
    shell:
        "python -m ketchup table --task-k {params.task_k:q} --out {output.main} --teacher-check {output.check} {input.teacher} {input.students} > {log} 2>&1"
