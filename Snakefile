# KETCHUP: K-step return estimation for sequential knowledge distillation.
# The data flows top to bottom through the rule files below; every rule calls one `python -m ketchup`
# stage. Targets: results/tables/main.csv (the paper's main table), or `all` (main table, analyses,
# figures: workflow/rules/analysis.smk, figures.smk).

from snakemake.utils import min_version

min_version("9.0")



include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/tokenizer.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/teacher.smk"
include: "workflow/rules/teacher_outputs.smk"
include: "workflow/rules/students.smk"
include: "workflow/rules/metrics.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/analysis_common.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/judge.smk"
include: "workflow/rules/plan.smk"


rule all:
    input:
        paths.table("main.csv"),
        ANALYSIS_TABLES,
        ANALYSIS_FIGURES,
    default_target: True
