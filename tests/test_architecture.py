"""The code's shape: an import graph without circles, short functions, and job specifications that
name commands of the table and configs that parse."""

import ast
from pathlib import Path

import pytest

from instructscale.config import load_config
from instructscale.stage import command
from instructscale.submit import JobSpec

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "platform"
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    modules = {}
    for path in (PACKAGE / "instructscale").rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    return modules


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``path`` imports anywhere (inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            if name.startswith("instructscale"):
                while name not in modules and "." in name:
                    name = name.rpartition(".")[0]
                found.add(name)
                break
    return found


def test_the_import_graph_has_no_circles():
    modules = _modules()
    graph = {m: _imports(p, modules) - {m} for m, p in modules.items()}
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        if module in path:
            pytest.fail("import circle: " + " -> ".join((*path[path.index(module) :], module)))
        if module in done:
            return
        for imported in sorted(graph[module]):
            visit(imported, (*path, module))
        done.add(module)

    for module in sorted(graph):
        visit(module, ())


@pytest.mark.parametrize("folder", ["platform", "benchmarks"])
def test_no_function_is_longer_than_60_lines(folder):
    long = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long


@pytest.mark.parametrize("spec", sorted(p.name for p in (ROOT / "jobs").glob("*.yaml")))
def test_job_specifications_name_a_command_and_a_config_that_parses(spec):
    job = JobSpec.load(str(ROOT / "jobs" / spec))
    cls = command(job.command)
    assert load_config(cls.Config, job.config, job.set)


def test_the_docs_list_every_command_of_the_table():
    from instructscale.cli import commands_in_order

    doc = (ROOT / "docs" / "architecture.md").read_text().split("| command | module |", 1)[1].split("\n\n", 1)[0]
    documented = [line.split("`")[1] for line in doc.splitlines() if line.startswith("| `")]
    builtin = [c.name for c in commands_in_order() if c.__module__.startswith("instructscale.")]
    assert documented == builtin
