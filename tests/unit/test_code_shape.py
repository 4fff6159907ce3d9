"""Issue 25: the package stays readable the way its anchors are: at most 5% of its non-blank lines over
100 characters (nanoGPT, CleanRL and OpenRLHF are at 4-6%), no function much over a screen, and no
import cycle between its packages, function bodies included."""
import ast
from pathlib import Path

import rlhf_ray

PACKAGE = Path(rlhf_ray.__file__).parent


def _modules():
    return sorted(PACKAGE.rglob("*.py"))


def test_at_most_five_percent_of_lines_are_over_100_characters():
    lines = [line for path in _modules() for line in path.read_text().splitlines() if line.strip()]
    long = [line for line in lines if len(line) > 100]
    assert len(long) / len(lines) <= 0.05, f"{len(long)} of {len(lines)} lines over 100 characters"


def test_no_function_is_much_over_fifty_lines():
    found = [(node.end_lineno - node.lineno + 1, f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}")
             for path in _modules() for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    assert [f for f in found if f[0] > 60] == []


def _package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[0] == "rlhf_ray" else None


def test_no_import_cycle_between_the_packages_in_function_bodies_either():
    """An edge a -> b for every `import rlhf_ray.b...` anywhere in package a (top level or inside a
    function); the graph between the packages (config, utils, models, data, rm, rl, scoring, report)
    has no cycle."""
    edges: dict[str, set[str]] = {}
    for path in _modules():
        rel = path.relative_to(PACKAGE).parts
        if len(rel) < 2:
            continue  # top-level modules sit above the packages
        here = rel[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rlhf_ray."):
                there = _package_of(node.module + ".x")
                if there and there != here and (PACKAGE / there).is_dir():
                    edges.setdefault(here, set()).add(there)

    def reaches(start: str, goal: str, seen: set) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in edges.get(start, ()))

    cycles = sorted(f"{a} -> {b} -> ... -> {a}" for a, targets in edges.items() for b in targets
                    if reaches(b, a, {b}))
    assert cycles == []
