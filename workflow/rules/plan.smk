# The cost plan (`snakemake results/plan/cost.csv`): a calibration job that runs where the jobs run
# (a GPU job under the slurm and workstation profiles, like a student) times the units the jobs are
# made of at the config's shapes; the plan job reads the DAG of plan.target from Snakemake's own dry
# run and predicts each job's seconds and peak memory from the config and the prepared data. The
# profiles then ask for each planned job's prediction times plan.margin (ketchup.planned).

rule plan_calibrate:
    output:
        paths.plan("calibration.json"),
    params:
        processes=job_processes("plan_calibrate"),
        config=as_json(config),
        repeats=PLAN["repeats"],
    log:
        "results/logs/plan/calibrate.log",
    benchmark:
        "results/benchmarks/plan/calibrate.tsv"
    threads: 1
    resources:
        gpu=job_processes("plan_calibrate"),
    conda:
        "../../envs/ketchup.yaml"
    shell:
        "python -m ketchup.launch --processes {params.processes} -m ketchup --threads {threads} plan-calibrate --config {params.config:q} --repeats {params.repeats} --out {output} > {log} 2>&1"


rule plan:
    input:
        calibration=paths.plan("calibration.json"),
        data=[paths.data(task, split) for task in TASKS for split in SPLITS],
        tokenizers=[paths.tokenizer(task) for task in TASKS] if config["tokenizer"]["kind"] == "train" else [],
    output:
        csv=paths.plan("cost.csv"),
        summary=paths.plan("summary.md"),
    params:
        config=as_json(config),
        snakefile=workflow.main_snakefile,
        configfiles=" ".join(f"'{f}'" for f in workflow.configfiles),
        data=as_json({task: paths.data_dir(task) for task in TASKS}),
        tokenizers=as_json(plan_tokenizers()),
        # The jobs planned run as this invocation runs them: forks of the warm worker in a local run
        # (common.smk's onstart), fresh interpreters elsewhere.
        startup="warm" if workflow.local_exec and not workflow.deployment_settings.deployment_method
        and os.environ.get("KETCHUP_WARM_WORKER", "1") != "0" else "cold",
    log:
        "results/logs/plan/plan.log",
    benchmark:
        "results/benchmarks/plan/plan.tsv"
    conda:
        "../../envs/ketchup.yaml"
    shell:
        "python -m ketchup plan --config {params.config:q} --calibration {input.calibration} --snakefile {params.snakefile} --data {params.data:q} --tokenizers {params.tokenizers:q} --out-csv {output.csv} --out-md {output.summary} --startup {params.startup} --configfile {params.configfiles} > {log} 2>&1"
