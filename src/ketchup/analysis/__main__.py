"""``python -m ketchup.analysis <command> ...``: the analyses, tables and figures (one command per rule).

Each command reads pipeline outputs named on its command line and writes its target atomically;
specs are JSON objects given inline (or as @path), built by workflow/rules/analysis*.smk.
"""

from __future__ import annotations

import argparse
import sys

from ketchup.runtime import MODEL_MODULES, import_quietly, json_spec, required, run_command


def _figure_args(p: argparse.ArgumentParser, name: str) -> None:
    """A command that draws the tidy table --csv with ``ketchup.analysis.figures.<name>``."""
    required(p, "csv", "pdf", "png", csv="the tidy table the figure draws")
    p.set_defaults(func=_figure, figure=name)


def _tasks_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks", type=json_spec, default=None,
                   help='{task: {"primary": metric, "title": name}} (default: the presets of the tasks named)')


def _table_args(p: argparse.ArgumentParser, func, inputs: str, spec_help: str | None = None) -> None:
    """A table built from many input files (positional), with an optional JSON spec."""
    _tasks_arg(p)
    if spec_help is not None:
        p.add_argument("--spec", type=json_spec, required=True, help=spec_help)
    required(p, "out")
    p.add_argument(inputs, nargs="+")
    p.set_defaults(func=func)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ketchup.analysis", description=__doc__)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("grad-variance", help="policy-gradient variance per K at one KL student (JSON)")
    p.add_argument("--spec", type=json_spec, required=True)
    required(p, "student", "teacher", "train-outputs", "out", student="the KL student's model directory",
             teacher="the teacher's model directory", train_outputs="results/teacher_outputs/{task}/train.jsonl")
    p.set_defaults(func=_grad_variance)

    p = sub.add_parser("grad-variance-table", help="grad_variance.csv from per-run JSON files")
    _table_args(p, _grad_variance_table, "runs")

    p = sub.add_parser("grad-variance-figure", help="draw grad_variance.csv")
    _figure_args(p, "grad_variance_figure")

    p = sub.add_parser("k-sweep-table", help="k_sweep.csv from metric files")
    _table_args(p, _k_sweep_table, "metrics", '{"sweep": {task: {K: run}}, "task_k": {task: K}}')

    p = sub.add_parser("k-sweep-figure", help="draw k_sweep.csv")
    _figure_args(p, "k_sweep_figure")

    p = sub.add_parser("lengths", help="length_by_k.csv from the sweep's predictions")
    p.add_argument("--spec", type=json_spec, required=True, help='{"sweep": {task: {K: run}}}')
    p.add_argument("--models", nargs="+", required=True, help="the runs' model directories (tokenizers)")
    p.add_argument("--predictions", nargs="+", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_lengths)

    p = sub.add_parser("student-size-table", help="student_size.csv: main.csv beside parameter counts")
    p.add_argument("--main", required=True)
    p.add_argument("--spec", type=json_spec, required=True,
                   help='{"models": {"task/student": dir}, "teachers": {task: dir}}')
    _tasks_arg(p)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_student_size_table)

    p = sub.add_parser("student-size-figure", help="draw student_size.csv")
    _figure_args(p, "student_size_figure")

    p = sub.add_parser("training-curves", help="training curves (csv, pdf, png) from model directories")
    required(p, "csv", "pdf", "png")
    _tasks_arg(p)
    p.add_argument("models", nargs="+")
    p.set_defaults(func=_training_curves)

    p = sub.add_parser("main-tables", help="main.md and main.tex from main.csv")
    required(p, "main", "md", "tex")
    p.add_argument("--spec", type=json_spec, default={}, help='{"tasks": [...], "students": [...]} (column order)')
    _tasks_arg(p)
    p.set_defaults(func=_main_tables)

    p = sub.add_parser("equal-time-table", help="equal_time.csv: PPO at equal rollouts and at equal training time")
    p.add_argument("--spec", type=json_spec, required=True,
                   help='{PPO method: {"plain": run, "rollouts": run, "time": run}}')
    p.add_argument("--metrics", nargs="+", required=True)
    p.add_argument("--models", nargs="+", required=True, help="the runs' model directories (metrics.jsonl)")
    _tasks_arg(p)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_equal_time_table)

    p = sub.add_parser("significance", help="paired bootstrap against the baselines (significance.csv)")
    _table_args(p, _significance, "metrics", '{"baselines": [...], "resamples": B, "seed": s, "confidence": c}')

    p = sub.add_parser("paper-comparison", help="paper_comparison.csv: main.csv beside the paper's numbers")
    required(p, "main", "out")
    p.add_argument("--spec", type=json_spec, required=True)
    p.set_defaults(func=_paper_comparison)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, "ketchup.analysis", "command", (ValueError,))  # DataError too


# One function per command (set_defaults(func=...) above).


def _figure(args: argparse.Namespace) -> None:
    import pandas as pd

    from ketchup.analysis import figures

    fig = getattr(figures, args.figure)(pd.read_csv(args.csv))
    figures.save(fig, args.pdf, args.png)


def _print_and_write(frame, out: str) -> None:
    from ketchup.analysis.common import write_csv

    print(frame.to_string(index=False))
    write_csv(frame, out)


def _grad_variance(args: argparse.Namespace) -> None:
    import_quietly(*MODEL_MODULES, "ketchup.analysis.grad_variance")  # the one analysis that loads models
    from ketchup.analysis import grad_variance

    result = grad_variance.run(args.spec, args.student, args.teacher, args.train_outputs, args.out)
    for r in result["rows"]:
        print(f"K={r['k']}: trace_cov={r['trace_cov']:.6g} [{r['trace_ci_low']:.6g}, {r['trace_ci_high']:.6g}] "
              f"relative={r['relative_variance']:.4f} mean_norm={r['mean_grad_norm']:.6g}")


def _grad_variance_table(args: argparse.Namespace) -> None:
    from ketchup.analysis import grad_variance
    from ketchup.analysis.common import write_csv

    write_csv(grad_variance.table(args.runs), args.out)


def _k_sweep_table(args: argparse.Namespace) -> None:
    from ketchup.analysis import ksweep

    _print_and_write(ksweep.k_sweep_table(args.metrics, args.spec["sweep"], args.spec.get("task_k", {}),
                                         args.tasks), args.out)


def _lengths(args: argparse.Namespace) -> None:
    from ketchup.analysis import lengths

    _print_and_write(lengths.length_table(args.predictions, args.models, args.spec["sweep"]), args.out)


def _student_size_table(args: argparse.Namespace) -> None:
    from ketchup.analysis import sizes
    from ketchup.analysis.common import write_csv

    models = {tuple(key.split("/", 1)): path for key, path in args.spec["models"].items()}
    write_csv(sizes.size_table(args.main, models, args.spec.get("teachers"), args.tasks), args.out)


def _training_curves(args: argparse.Namespace) -> None:
    from ketchup.analysis import curves, figures
    from ketchup.analysis.common import write_csv

    frame = curves.read_curves(args.models)
    write_csv(frame, args.csv)
    figures.save(figures.training_curves_figure(frame, args.tasks), args.pdf, args.png)


def _main_tables(args: argparse.Namespace) -> None:
    import pandas as pd

    from ketchup.analysis import tables_paper
    from ketchup.io import write_text

    main_ = pd.read_csv(args.main)
    tasks, students = args.spec.get("tasks"), args.spec.get("students")
    md = tables_paper.markdown(main_, tasks, students, args.tasks)
    print(md)
    write_text(args.md, md)
    write_text(args.tex, tables_paper.latex(main_, tasks, students, args.tasks))


def _equal_time_table(args: argparse.Namespace) -> None:
    from ketchup.analysis import equal_time

    _print_and_write(equal_time.equal_time_table(args.metrics, args.models, args.spec, args.tasks), args.out)


def _significance(args: argparse.Namespace) -> None:
    from ketchup.analysis import significance

    s = args.spec
    _print_and_write(significance.significance_table(args.metrics, s.get("baselines", ["kl", "llmr"]),
                                                     s.get("resamples", 1000), s.get("seed", 0),
                                                     s.get("confidence", 0.95), info=args.tasks), args.out)


def _paper_comparison(args: argparse.Namespace) -> None:
    from ketchup.analysis import paper

    _print_and_write(paper.comparison(args.main, args.spec), args.out)


if __name__ == "__main__":
    from ketchup.worker import run

    sys.exit(run("ketchup.analysis", sys.argv[1:]))
