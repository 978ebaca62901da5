# The paper's main table in tidy form: task, metric, student, method, k, seeds, mean, std.


rule main_table:
    input:
        teacher=[paths.teacher_metrics(task) for task in TASKS],
        students=student_metric_files(),
    output:
        main=paths.table("main.csv"),
        check=paths.table("teacher_vs_untrained.csv"),
    params:
        task_k=as_json({task: task_cfg(task).get("k", 1) for task in TASKS}),
        primary=as_json({task: tdef["primary_metric"] for task, tdef in TASK_DEFS.items()}),
    log:
        "results/logs/tables/main.log",
    benchmark:
        "results/benchmarks/tables/main.tsv"
    conda:
        "../../envs/ketchup.yaml"
    shell:
        "python -m ketchup table --task-k {params.task_k:q} --out {output.main} --teacher-check {output.check} --primary {params.primary:q} {input.teacher} {input.students} > {log} 2>&1"
