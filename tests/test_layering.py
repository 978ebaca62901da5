"""Import direction inside the package: the analyses and the judge sit below the command lines and
the stages (they take shared helpers from ketchup.runtime), so none of their modules imports them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "ketchup"
LOWER = ("analysis", "judge")
UPPER = {"ketchup.cli", "ketchup.stages", "ketchup.__main__"}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)


def imported_modules(source: str, module: str) -> set[str]:
    """Absolute names of every module ``source`` (the module named ``module``) imports, at any depth
    (function-level imports too); ``from a import b`` counts as both ``a`` and ``a.b``."""
    package = module.rsplit(".", 1)[0]  # what a relative import climbs from (a package for __init__ too)
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: climb level - 1 packages from this module's package
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from ketchup import cli`
    return names


def test_imported_modules_resolves_absolute_relative_and_nested_imports():
    source = "from . import cache\nfrom ..io import read_json\ndef f():\n    from ketchup import stages\n"
    names = imported_modules(source, "ketchup.judge.probe")
    assert {"ketchup.judge.cache", "ketchup.io", "ketchup.io.read_json", "ketchup.stages"} <= names
    assert "ketchup.cli" in imported_modules("import ketchup.cli as c\n", "ketchup.analysis.probe")


@pytest.mark.parametrize("path", sorted(p for part in LOWER for p in (PACKAGE / part).rglob("*.py")),
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_analysis_and_judge_do_not_import_the_command_line_or_stages(path):
    upward = sorted(name for name in imported_modules(path.read_text(), module_name(path)) if name in UPPER)
    assert not upward, f"{path.relative_to(PACKAGE)} imports {upward}; take the helper from ketchup.runtime"


@pytest.mark.parametrize("module", ["ketchup.cli", "ketchup.analysis.__main__"])
def test_every_subcommand_names_its_function(module):
    """Dispatch is by ``set_defaults(func=...)``: a subcommand without one could not run."""
    import argparse
    import importlib

    parser = importlib.import_module(module).build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    missing = [name for name, p in sub.choices.items() if not callable(p.get_default("func"))]
    assert sub.choices and not missing


def test_dag_build_imports_stay_light():
    """What common.smk imports while Snakemake builds the DAG (every snakemake call, dry runs and
    --lint included) loads neither torch, transformers nor numpy."""
    import re
    import subprocess
    import sys

    common = (PACKAGE.parents[1] / "workflow" / "rules" / "common.smk").read_text()
    modules = set()
    for line in common.splitlines():
        if match := re.match(r"from (ketchup[\w.]*) import (.*?)\s*(#.*)?$", line):
            package, names = match.group(1), match.group(2)
            for name in names.split(","):
                name = name.strip().split(" as ")[0]
                modules.add(f"{package}.{name}" if package == "ketchup" else package)
    assert "ketchup.span_corruption" in modules and "ketchup.specs" in modules
    code = ("import importlib, sys\n"
            f"for m in {sorted(modules)!r}: importlib.import_module(m)\n"
            "print(sorted(h for h in ('torch', 'transformers', 'numpy') if h in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(PACKAGE.parent), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "[]", out.stdout
