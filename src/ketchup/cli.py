"""``python -m ketchup <stage> ...``: one command per pipeline stage (each Snakemake rule calls one)."""

from __future__ import annotations

import argparse
import logging
import sys

from ketchup.runtime import MODEL_MODULES, import_quietly, json_spec, required, run_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ketchup", description=__doc__)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    sub = parser.add_subparsers(dest="stage", required=True)

    p = sub.add_parser("data", help="write {train,dev,test}.jsonl of a task in the hub schema")
    required(p, "task", "out", out="output directory")
    p.add_argument("--spec", type=json_spec, required=True, help="the task's config block (JSON)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_data)

    p = sub.add_parser("tokenizer", help="train a BPE tokenizer on a task's train split")
    required(p, "task", "data", "out")
    p.add_argument("--prompt", default="")
    p.add_argument("--vocab-size", type=int, required=True)
    p.add_argument("--calculator", action="store_true", help="train on targets that keep calculator annotations")
    _task_def(p)
    p.add_argument("--sentinels", type=int, default=0, help="add this many sentinel tokens (span corruption)")
    p.set_defaults(func=_tokenizer)

    p = sub.add_parser("teacher", help="fine-tune the teacher, keep the dev-best checkpoint")
    p.add_argument("--spec", type=json_spec, required=True)
    required(p, "data", "tokenizer", "checkpoints", "out")
    p.set_defaults(func=_teacher)

    p = sub.add_parser("pretrain", help="pretrain a student size on the task's training text")
    p.add_argument("--spec", type=json_spec, required=True)
    required(p, "data", "tokenizer", "checkpoints", "out", data="the task's train split (JSONL), the only text read")
    p.set_defaults(func=_pretrain)

    p = sub.add_parser("generate", help="greedy outputs of a saved model on one split")
    required(p, "task", "model", "data", "out", data="a split file in the hub schema")
    p.add_argument("--arch", default="seq2seq", choices=["seq2seq", "decoder"])
    p.add_argument("--prompt", default="")
    p.add_argument("--generation", type=json_spec, required=True)
    p.add_argument("--max-source-length", type=int, required=True)
    p.add_argument("--teacher", action="store_true", help="the teacher: run in --teacher-dtype")
    _task_def(p)
    p.add_argument("--teacher-dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="teacher.dtype (auto: bf16 on a GPU, float32 on the CPU)")
    p.set_defaults(func=_generate)

    p = sub.add_parser("student", help="train one student with its method's objective")
    p.add_argument("--spec", type=json_spec, required=True)
    required(p, "data", "teacher-outputs", "teacher", "checkpoints", "out", "predictions",
             predictions="where the dev-best model's test predictions go (JSONL)")
    p.add_argument("--init", default=None, help="start from this saved model (RL starts from KL)")
    p.set_defaults(func=_student)

    p = sub.add_parser("score", help="task metrics of one prediction file")
    required(p, "task", "predictions", "out")
    _task_def(p)
    p.set_defaults(func=_score)

    p = sub.add_parser("table", help="the tidy main table from metric files")
    p.add_argument("--task-k", type=json_spec, required=True, help='{"task": K}')
    p.add_argument("--out", required=True)
    p.add_argument("--teacher-check", default=None, help="also write teacher vs untrained student here")
    p.add_argument("--primary", type=json_spec, default=None, help='{"task": primary metric} (default: the presets)')
    p.add_argument("metrics", nargs="+")
    p.set_defaults(func=_table)

    p = sub.add_parser("plan-calibrate", help="time the units the config's jobs are made of, on this machine")
    p.add_argument("--config", type=json_spec, required=True, help="the whole validated config (JSON or @file)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--shapes", default=None,
                   help="YAML: model configs by name_or_path, for models whose config cannot be read here")
    p.add_argument("--max-batch", type=int, default=None, help="time at most this many rows (scaled up after)")
    p.add_argument("--max-length", type=int, default=None, help="time at most this many tokens (fitted, extrapolated)")
    p.add_argument("--max-layers", type=int, default=None,
                   help="time at most this many layers per stack (per-layer costs scaled up after)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_plan_calibrate)

    p = sub.add_parser("plan", help="the cost plan: one row per job of the DAG, and its summary")
    p.add_argument("--config", type=json_spec, required=True, help="the whole validated config (JSON or @file)")
    required(p, "calibration", "snakefile", "out-csv", "out-md")
    p.add_argument("--configfile", nargs="*", default=[], help="the config files of the run planned")
    p.add_argument("--data", type=json_spec, required=True, help='{"task": data folder}')
    p.add_argument("--tokenizers", type=json_spec, required=True, help='{"task": [tokenizer folder or name, gguf]}')
    p.add_argument("--startup", choices=["cold", "warm"], default="cold",
                   help="jobs start as fresh interpreters (cold) or forks of a local run's warm worker")
    p.set_defaults(func=_plan)

    # LLM judge (ketchup.judge); the settings are the config's judge block, the key comes from the
    # environment variable it names and is never an argument.
    p = sub.add_parser("judge-score", help="LLM-judge 1-10 scores of a sample of one run's predictions")
    p.add_argument("--spec", type=json_spec, required=True, help="the config's judge block (JSON)")
    required(p, "task", "predictions", "cache-dir", "out", cache_dir="content-addressed reply cache",
             out="scores.jsonl (a .summary.json is written beside it)")
    p.set_defaults(func=_judge_score)

    p = sub.add_parser("judge-pairwise", help="LLM-judge verdicts of one run against the baseline, both orders")
    p.add_argument("--spec", type=json_spec, required=True, help="the config's judge block (JSON)")
    required(p, "task", "predictions", "baseline-predictions", "cache-dir", "out",
             cache_dir="content-addressed reply cache", out="pairwise.jsonl (a .summary.json is written beside it)")
    p.add_argument("--baseline", default=None, help="baseline method name to record (default judge.baseline)")
    p.set_defaults(func=_judge_pairwise)

    p = sub.add_parser("judge-table", help="llm_judge.csv from per-run judge files (.../{task}/{student}/{method}/seed{seed}/)")
    p.add_argument("--scores", nargs="*", default=[])
    p.add_argument("--pairwise", nargs="*", default=[])
    p.add_argument("--out", required=True)
    p.set_defaults(func=_judge_table)

    p = sub.add_parser("judge-figure", help="draw llm_judge.csv to a PDF and a PNG")
    required(p, "csv", "pdf", "png")
    p.set_defaults(func=_judge_figure)
    return parser


def _task_def(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task-spec", type=json_spec, default=None,
                   help="the task's definition, or the part of it the stage needs (JSON; default: the preset --task)")


def main(argv: list[str] | None = None) -> int:
    from ketchup.config import ConfigError
    from ketchup.io import DataError, StorageError
    from ketchup.judge.config import JudgeAPIError, JudgeConfigError

    return run_command(build_parser(), argv, "ketchup", "stage",
                       (ConfigError, DataError, StorageError, JudgeConfigError, JudgeAPIError))


# One function per stage (set_defaults(func=...) above). A stage that loads models checks its spec
# first, before torch is imported: a bad spec costs nothing.


def _data(args: argparse.Namespace) -> None:
    from ketchup import stages

    stages.data(task=args.task, spec=args.spec, seed=args.seed, out_dir=args.out)


def _tokenizer(args: argparse.Namespace) -> None:
    from ketchup import stages, tasks

    stages.tokenizer(task=tasks.named(args.task, args.task_spec), data_dir=args.data, prompt=args.prompt,
                     vocab_size=args.vocab_size, out_dir=args.out, calculator=args.calculator, sentinels=args.sentinels)


def _teacher(args: argparse.Namespace) -> None:
    from ketchup import specs

    specs.check_teacher(args.spec)
    import_quietly(*MODEL_MODULES)
    from ketchup import stages

    stages.teacher(spec=args.spec, data_dir=args.data, tokenizer_dir=args.tokenizer, ckpt_dir=args.checkpoints,
                   out_dir=args.out)


def _pretrain(args: argparse.Namespace) -> None:
    from ketchup import specs

    specs.check_pretrain(args.spec)
    import_quietly(*MODEL_MODULES)
    from ketchup import stages

    stages.pretrain(spec=args.spec, data_path=args.data, tokenizer_dir=args.tokenizer, ckpt_dir=args.checkpoints,
                    out_dir=args.out)


def _generate(args: argparse.Namespace) -> None:
    import_quietly(*MODEL_MODULES)
    from ketchup import stages, tasks

    stages.outputs(task=tasks.named(args.task, args.task_spec), arch=args.arch, model_dir=args.model,
                   data_path=args.data, prompt=args.prompt, gen=args.generation,
                   max_source_length=args.max_source_length, out_path=args.out, teacher=args.teacher,
                   teacher_dtype_setting=args.teacher_dtype)


def _student(args: argparse.Namespace) -> None:
    from ketchup import specs

    specs.check_student(args.spec, args.init)
    import_quietly(*MODEL_MODULES)
    from ketchup import stages

    stages.student(spec=args.spec, data_dir=args.data, teacher_outputs_dir=args.teacher_outputs,
                   teacher_dir=args.teacher, init_dir=args.init, ckpt_dir=args.checkpoints, out_dir=args.out,
                   predictions_path=args.predictions)


def _score(args: argparse.Namespace) -> None:
    from ketchup.scoring import score

    score(args.task, args.predictions, args.out, args.task_spec)


def _table(args: argparse.Namespace) -> None:
    from ketchup import tables

    table = tables.main_table(args.metrics, args.task_k)
    tables.write_csv(table, args.out)
    if args.teacher_check:
        check = tables.teacher_vs_untrained(table, args.primary)
        print(check.to_string(index=False))
        tables.write_csv(check, args.teacher_check)


def _plan_calibrate(args: argparse.Namespace) -> None:
    import yaml

    from ketchup.config import validate

    validate(args.config)
    shapes = yaml.safe_load(open(args.shapes)) if args.shapes else None
    import_quietly(*MODEL_MODULES)
    from ketchup.calibration import calibrate
    from ketchup.io import write_json

    write_json(args.out, calibrate(args.config, repeats=args.repeats, shapes=shapes, max_batch=args.max_batch,
                                   max_length=args.max_length, max_layers=args.max_layers))


def _plan(args: argparse.Namespace) -> None:
    import json

    from ketchup import dagjobs, plan
    from ketchup.config import plan_settings
    from ketchup.models import load_tokenizer, prepare_tokenizer

    config = args.config
    settings = plan_settings(config)
    cal = json.loads(open(args.calibration).read())
    jobs = dagjobs.parse_dry_run(dagjobs.dry_run(args.snakefile, ".", args.configfile, settings["target"]))
    lengths = {}
    for task, (source, gguf) in args.tokenizers.items():
        tok = prepare_tokenizer(load_tokenizer(source, gguf), config["architecture"],
                                config.get("prompt_format", "chat"))
        lengths[task] = plan.data_lengths(config, task, args.data[task], tok)
    rows = plan.plan_rows(config, cal, jobs, lengths, settings["margin"], args.startup)
    rows = plan.judge_rows(config, rows, args.data, cal, lengths, settings["margin"], args.startup)
    plan.write_csv(rows, args.out_csv)
    with open(args.out_md, "w") as handle:
        handle.write(plan.summary(rows, config, cal, lengths, settings["target"], settings["margin"], args.startup))


def _quiet_http_logs() -> None:
    """HTTP client logs at WARNING (after importing openai, which may apply OPENAI_LOG): one line per
    request is noise, and never the key."""
    import ketchup.judge.stages  # noqa: F401  (imports openai)

    for name in ("openai", "httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _judge_score(args: argparse.Namespace) -> None:
    _quiet_http_logs()
    from ketchup.judge.stages import score_run

    score_run(args.spec, args.task, args.predictions, args.out, args.cache_dir)


def _judge_pairwise(args: argparse.Namespace) -> None:
    _quiet_http_logs()
    from ketchup.judge.stages import pairwise_run

    pairwise_run(args.spec, args.task, args.predictions, args.baseline_predictions, args.out, args.cache_dir,
                 baseline=args.baseline)


def _judge_table(args: argparse.Namespace) -> None:
    from ketchup.judge.stages import judge_table

    judge_table(args.scores, args.pairwise, args.out)


def _judge_figure(args: argparse.Namespace) -> None:
    from ketchup.judge.figure import judge_figure

    judge_figure(args.csv, args.pdf, args.png)


if __name__ == "__main__":
    sys.exit(main())
