# Figures (matplotlib, Agg): PDF for papers, PNG for the Snakemake report (captions in workflow/report/).


rule k_sweep_figure:
    input:
        "results/tables/k_sweep.csv",
    output:
        pdf="results/figures/k_sweep.pdf",
        png=report("results/figures/k_sweep.png", caption="../report/k_sweep.rst", category="Figures"),
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
        "results/tables/grad_variance.csv",
    output:
        pdf="results/figures/grad_variance.pdf",
        png=report("results/figures/grad_variance.png", caption="../report/grad_variance.rst", category="Figures"),
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
        "results/tables/student_size.csv",
    output:
        pdf="results/figures/student_size.pdf",
        png=report("results/figures/student_size.png", caption="../report/student_size.rst", category="Figures"),
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
        csv="results/tables/training_curves.csv",
        pdf="results/figures/training_curves.pdf",
        png=report(
            "results/figures/training_curves.png", caption="../report/training_curves.rst", category="Figures"
        ),
    log:
        "results/logs/figures/training_curves.log",
    benchmark:
        "results/benchmarks/figures/training_curves.tsv"
    conda:
        "../../envs/ketchup.yaml"
    shell:
        "python -m ketchup.analysis training-curves --csv {output.csv} --pdf {output.pdf} --png {output.png} {input} > {log} 2>&1"
