"""The layers of the tree (docs/api.md, "Layout"), read from the source with `ast` (nothing is imported):

    library    degradations/, solvers/, ipsolve/models/ and the modules directly in ipsolve/
    services   ipsolve/services/
    front-ends ipsolve/cli/ (with ipsolve/__main__.py, `python -m ipsolve`) and ipsolve/studio/

The library imports no service and no front-end; services import no front-end; neither front-end imports
the other. Imports inside functions (the lazy ones) count, and so do module names written as strings
(`importlib.import_module("ipsolve.studio")`). The one allowed edge: `ipsolve studio` is a command of
the command line, so `ipsolve.cli` (its table of lazily imported commands) names `ipsolve.studio` to
start it.
"""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ipsolve", "degradations", "solvers")
MODULE_NAME = re.compile(r"(ipsolve|degradations|solvers)(\.\w+)+")
ALLOWED = {("ipsolve.cli", "ipsolve.studio")}  # (importer, imported): `ipsolve studio` starts the studio


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    if module == "ipsolve.__main__" or module == "ipsolve.cli" or module.startswith("ipsolve.cli."):
        return "cli"
    if module == "ipsolve.studio" or module.startswith("ipsolve.studio."):
        return "studio"
    if module == "ipsolve.services" or module.startswith("ipsolve.services."):
        return "services"
    return "library"


FORBIDDEN = {"library": {"services", "cli", "studio"}, "services": {"cli", "studio"},
             "cli": {"studio"}, "studio": {"cli"}}


def imported(source: str, module: str, is_package: bool) -> set[str]:
    """Every module `source` imports, at any depth, plus module names it spells out as strings."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x / from ..y import z
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[:len(package) - node.level + 1]
                base = ".".join(package + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from ipsolve import services`
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_NAME.fullmatch(node.value):
            names.add(node.value)
    return {name for name in names if name.split(".")[0] in PACKAGES}


def modules():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield module_name(path), path


def violations(module: str, source: str, is_package: bool) -> list[str]:
    found = []
    for name in sorted(imported(source, module, is_package)):
        if layer(name) in FORBIDDEN[layer(module)] and (module, name) not in ALLOWED:
            found.append(f"{module} ({layer(module)}) imports {name} ({layer(name)})")
    return found


def test_every_layer_has_modules():
    layers = {layer(name) for name, _ in modules()}
    assert layers == {"library", "services", "cli", "studio"}


@pytest.mark.parametrize("module, path", list(modules()), ids=lambda value: str(value).split("/")[-1])
def test_imports_follow_the_layers(module, path):
    assert violations(module, path.read_text(encoding="utf-8"), path.name == "__init__.py") == []


def test_the_one_allowed_edge_is_the_studio_command():
    """`ipsolve studio` really is wired through the command line (else the exception is not needed)."""
    assert "ipsolve.studio" in imported((ROOT / "ipsolve/cli/__init__.py").read_text(), "ipsolve.cli", True)


@pytest.mark.parametrize("module, source", [
    ("ipsolve.metrics", "def f():\n    from ipsolve.services.checks import one_line\n"),
    ("ipsolve.models.unet", "from ..services import values\n"),
    ("solvers.ddrm", "import ipsolve.cli\n"),
    ("ipsolve.services.restore_run", "from ipsolve import studio\n"),
    ("ipsolve.studio.events", "def f():\n    from ipsolve.cli import build_parser\n"),
    ("ipsolve.cli.restore", "import importlib\nimportlib.import_module('ipsolve.studio.events')\n"),
])
def test_a_forbidden_import_is_caught_even_inside_a_function(module, source):
    assert violations(module, source, False)


# ---------------------------------------------------------------- front-ends only build a plan and run it

PLAN_COMMANDS = ("restore", "degrade", "generate", "eval")  # ipsolve/cli/NAME.py: `run_NAME` is the command
PRESENTATION = ("ipsolve.services.values", "ipsolve.services.interrupts", "ipsolve.services.progress")
PLAN_NAME = re.compile(r"plan_\w+|run_\w+_plan|\w+Request|\w+Plan")


def service_names(source: str) -> set[tuple[str, str]]:
    """(module, name) of every name a front-end imports from a service, at any depth."""
    return {(node.module, alias.name) for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ipsolve.services")
            for alias in node.names}


def calls_in_order(source: str, function: str) -> list[str]:
    """The names `function` calls, in the order they are called (an argument's call ends first)."""
    body = next(node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.FunctionDef)
                and node.name == function)
    calls = [node for node in ast.walk(body) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)]
    return [call.func.id for call in sorted(calls, key=lambda call: (call.end_lineno, call.end_col_offset))]


def plan_violations(source: str, command: str) -> list[str]:
    found = [f"imports {module}.{name}, neither a plan nor its run" for module, name in sorted(service_names(source))
             if module not in PRESENTATION and not PLAN_NAME.fullmatch(name)]
    calls = [name for name in calls_in_order(source, f"run_{command}") if PLAN_NAME.fullmatch(name)]
    plans = [i for i, name in enumerate(calls) if name.startswith("plan_")]
    runs = [i for i, name in enumerate(calls) if name.startswith("run_")]
    if not plans:
        found.append(f"run_{command} builds no plan")
    elif runs and min(runs) < min(plans):
        found.append(f"run_{command} runs before it plans")
    return found


@pytest.mark.parametrize("command", PLAN_COMMANDS)
def test_a_command_only_builds_a_plan_and_runs_it(command):
    """Every check lives in the plan (`plan_*`, nothing written); the front-end builds it, runs it
    (`run_*_plan`) and shows what came of it."""
    assert plan_violations((ROOT / f"ipsolve/cli/{command}.py").read_text(encoding="utf-8"), command) == []


@pytest.mark.parametrize("source", [
    "from ipsolve.services.degrade_file import degrade_file\ndef run_degrade(args):\n    degrade_file(args)\n",
    "from ipsolve.services.checks import check_writable_folder\nfrom ipsolve.services.degrade_file import "
    "plan_degrade, run_degrade_plan\ndef run_degrade(args):\n    check_writable_folder(args.o)\n"
    "    run_degrade_plan(plan_degrade(args))\n",
    "from ipsolve.services.degrade_file import plan_degrade, run_degrade_plan\ndef run_degrade(args):\n"
    "    run_degrade_plan(args)\n    plan_degrade(args)\n",
])
def test_a_front_end_that_checks_or_writes_itself_is_caught(source):
    assert plan_violations(source, "degrade")
