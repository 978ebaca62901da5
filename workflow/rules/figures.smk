# Figures (matplotlib, Agg): PDF for papers, PNG for the Snakemake report (captions in workflow/report/).


rule k_sweep_figure:
    input:
        paths.table("k_sweep.csv"),
    output:
        pdf=paths.figure("k_sweep", "pdf"),
        png=report(paths.figure("k_sweep", "png"), caption="../report/k_sweep.rst", category="Figures"),
    log:
        "results/logs/figures/k_sweep.log",
    benchmark:
        "results/benchmarks/figures/k_sweep.tsv"
    conda:
        "../../envs/ketchup.yaml"
    shell:
        "python -m ketchup.analysis k-sweep-figure --csv {input} --pdf {output.pdf} --png {output.png} > {log} 2>&1"


rule grad_variance_figure:
    input:
        paths.table("grad_variance.csv"),
    output:
        pdf=paths.figure("grad_variance", "pdf"),
        png=report(paths.figure("grad_variance", "png"), caption="../report/grad_variance.rst", category="Figures"),
    log:
        "results/logs/figures/grad_variance.log",
    benchmark:
        "results/benchmarks/figures/grad_variance.tsv"
    conda:
        "../../envs/ketchup.yaml"
    shell:
        "python -m ketchup.analysis grad-variance-figure --csv {input} --pdf {output.pdf} --png {output.png} > {log} 2>&1"


rule student_size_figure:
    input:
        paths.table("student_size.csv"),
    output:
        pdf=paths.figure("student_size", "pdf"),
        png=report(paths.figure("student_size", "png"), caption="../report/student_size.rst", category="Figures"),
    log:
        "results/logs/figures/student_size.log",
    benchmark:
        "results/benchmarks/figures/student_size.tsv"
    conda:
        "../../envs/ketchup.yaml"
    shell:
        "python -m ketchup.analysis student-size-figure --csv {input} --pdf {output.pdf} --png {output.png} > {log} 2>&1"


rule training_curves:
    input:
        trained_model_dirs(),
    output:
        csv=paths.table("training_curves.csv"),
        pdf=paths.figure("training_curves", "pdf"),
        png=report(
            paths.figure("training_curves", "png"), caption="../report/training_curves.rst", category="Figures"
        ),
    params:
        tasks=TASK_INFO,
    log:
        "results/logs/figures/training_curves.log",
    benchmark:
        "results/benchmarks/figures/training_curves.tsv"
    conda:
        "../../envs/ketchup.yaml"
    shell:
        "python -m ketchup.analysis training-curves --tasks {params.tasks:q} --csv {output.csv} --pdf {output.pdf} --png {output.png} {input} > {log} 2>&1"
