# Analyses beyond the main table: K sweep, policy-gradient variance, output lengths, significance,
# the main table in the paper's layout and beside the paper's numbers. Helpers: analysis_common.smk.


rule k_sweep_table:
    input:
        sweep_files(paths.metrics("{task}", "{student}", "{method}", "{seed}")),
    output:
        report(paths.table("k_sweep.csv"), caption="../report/k_sweep_table.rst", category="Tables"),
    params:
        tasks=TASK_INFO,
        spec=sweep_spec(),
    log:
        "results/logs/analysis/k_sweep_table.log",
    benchmark:
        "results/benchmarks/analysis/k_sweep_table.tsv"
    conda:
        "../../envs/ketchup.yaml"
    shell:
        "python -m ketchup.analysis k-sweep-table --tasks {params.tasks:q} --spec {params.spec:q} --out {output} {input} > {log} 2>&1"


rule grad_variance:
    input:
        student=paths.student_model("{task}", "{student}", "kl", "{seed}"),
        teacher=paths.teacher_model("{task}"),
        train_outputs=paths.teacher_outputs("{task}", "train"),
    output:
        paths.grad_variance("{task}", "{student}", "{seed}"),
    params:
        spec=grad_variance_spec,
    log:
        "results/logs/analysis/grad_variance/{task}/{student}/seed{seed}.log",
    benchmark:
        "results/benchmarks/analysis/grad_variance/{task}/{student}/seed{seed}.tsv"
    threads: 1
    conda:
        "../../envs/ketchup.yaml"
    shell:
        "python -m ketchup.analysis --threads {threads} grad-variance --spec {params.spec:q} --student {input.student} --teacher {input.teacher} --train-outputs {input.train_outputs} --out {output} > {log} 2>&1"


rule grad_variance_table:
    input:
        grad_variance_files(),
    output:
        report(paths.table("grad_variance.csv"), caption="../report/grad_variance_table.rst", category="Tables"),
    log:
        "results/logs/analysis/grad_variance_table.log",
    benchmark:
        "results/benchmarks/analysis/grad_variance_table.tsv"
    conda:
        "../../envs/ketchup.yaml"
    shell:
        "python -m ketchup.analysis grad-variance-table --out {output} {input} > {log} 2>&1"


rule length_by_k:
    input:
        predictions=sweep_files(paths.predictions("{task}", "{student}", "{method}", "{seed}"), runs_only=True),
        models=sweep_files(paths.student_model("{task}", "{student}", "{method}", "{seed}"), runs_only=True),
    output:
        report(paths.table("length_by_k.csv"), caption="../report/length_by_k.rst", category="Tables"),
    params:
        spec=sweep_spec(),
    log:
        "results/logs/analysis/length_by_k.log",
    benchmark:
        "results/benchmarks/analysis/length_by_k.tsv"
    conda:
        "../../envs/ketchup.yaml"
    shell:
        "python -m ketchup.analysis lengths --spec {params.spec:q} --models {input.models} --predictions {input.predictions} --out {output} > {log} 2>&1"


rule significance:
    input:
        teacher=[paths.teacher_metrics(task) for task in TASKS],
        students=student_metric_files() + equal_time_files(paths.metrics("{task}", "{student}", "{method}", "{seed}"), True),
    output:
        report(paths.table("significance.csv"), caption="../report/significance.rst", category="Tables"),
    params:
        tasks=TASK_INFO,
        spec=significance_spec(),
    log:
        "results/logs/analysis/significance.log",
    benchmark:
        "results/benchmarks/analysis/significance.tsv"
    conda:
        "../../envs/ketchup.yaml"
    shell:
        "python -m ketchup.analysis significance --tasks {params.tasks:q} --spec {params.spec:q} --out {output} {input.teacher} {input.students} > {log} 2>&1"


rule main_table_paper_layout:
    input:
        paths.table("main.csv"),
    output:
        md=report(paths.table("main.md"), caption="../report/main_table.rst", category="Tables"),
        tex=paths.table("main.tex"),
    params:
        tasks=TASK_INFO,
        spec=as_json({"tasks": TASKS, "students": STUDENTS}),
    log:
        "results/logs/analysis/main_table_paper_layout.log",
    benchmark:
        "results/benchmarks/analysis/main_table_paper_layout.tsv"
    conda:
        "../../envs/ketchup.yaml"
    shell:
        "python -m ketchup.analysis main-tables --tasks {params.tasks:q} --main {input} --spec {params.spec:q} --md {output.md} --tex {output.tex} > {log} 2>&1"


rule paper_comparison:
    input:
        main=paths.table("main.csv"),
        numbers=str(SRC / "ketchup" / "analysis" / "paper_numbers.csv"),
    output:
        report(paths.table("paper_comparison.csv"), caption="../report/paper_comparison.rst", category="Tables"),
    params:
        spec=paper_spec(),
    log:
        "results/logs/analysis/paper_comparison.log",
    benchmark:
        "results/benchmarks/analysis/paper_comparison.tsv"
    conda:
        "../../envs/ketchup.yaml"
    shell:
        "python -m ketchup.analysis paper-comparison --main {input.main} --spec {params.spec:q} --out {output} > {log} 2>&1"


rule student_size_table:
    input:
        main=paths.table("main.csv"),
        models=list(size_models().values()),
        teachers=[paths.teacher_model(task) for task in TASKS],
    output:
        paths.table("student_size.csv"),
    params:
        tasks=TASK_INFO,
        spec=size_spec(),
    log:
        "results/logs/analysis/student_size_table.log",
    benchmark:
        "results/benchmarks/analysis/student_size_table.tsv"
    conda:
        "../../envs/ketchup.yaml"
    shell:
        "python -m ketchup.analysis student-size-table --tasks {params.tasks:q} --main {input.main} --spec {params.spec:q} --out {output} > {log} 2>&1"


rule equal_time_table:
    input:
        metrics=equal_time_files(paths.metrics("{task}", "{student}", "{method}", "{seed}")),
        models=equal_time_files(paths.student_model("{task}", "{student}", "{method}", "{seed}")),
    output:
        report(paths.table("equal_time.csv"), caption="../report/equal_time.rst", category="Tables"),
    params:
        tasks=TASK_INFO,
        spec=as_json(EQUAL_TIME),
    log:
        "results/logs/analysis/equal_time_table.log",
    benchmark:
        "results/benchmarks/analysis/equal_time_table.tsv"
    conda:
        "../../envs/ketchup.yaml"
    shell:
        "python -m ketchup.analysis equal-time-table --tasks {params.tasks:q} --spec {params.spec:q} --metrics {input.metrics} --models {input.models} --out {output} > {log} 2>&1"
