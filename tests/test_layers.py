"""The layer rule of docs/architecture.md, read from the source: every import in pipeline/ (function-level ones
included) goes to the module's own package or a lower one, and no modules import each other in a circle."""

from __future__ import annotations

import ast
from pathlib import Path

import pipeline

ROOT = Path(pipeline.__file__).parent
# Bottom to top; a module imports its own package or one to its left. pipeline/__init__.py (LABELS) is below all.
LAYERS = ("core", "text", "labeling", "models", "training", "prediction", "stages", "cli")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imported(path: Path, known: dict[str, Path]) -> set[str]:
    """The pipeline modules a file imports, anywhere in it (`from pipeline.x import y` counts y when y is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("pipeline"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline") and not node.level:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
    return {name for name in found if name in known}


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imported(path, known) - {name} for name, path in known.items()}


def test_every_module_is_in_a_layer():
    loose = [m for m in modules() if layer(m) is None and m not in ("pipeline", "pipeline.__main__")]
    assert not loose, f"modules outside the layer packages {LAYERS}: {loose}"


def test_no_upward_import():
    upward = []
    for name, targets in graph().items():
        own = layer(name)
        if own is None:  # pipeline/__init__.py and __main__ (the CLI's entry): checked as the top
            own = len(LAYERS) if name == "pipeline.__main__" else -1
        for target in targets:
            below = layer(target)
            if below is None:
                below = -1 if target == "pipeline" else len(LAYERS)
            if below > own:
                upward.append(f"{name} -> {target}")
    assert not upward, "imports to a higher layer:\n" + "\n".join(sorted(upward))


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path of module names, or None (a depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle():
    edges = graph()
    for package in ("pipeline.%s" % name for name in LAYERS):  # a package's __init__ is a name, not a dependency
        edges.pop(package, None)
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checks_see_a_cycle_and_an_upward_import():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert layer("pipeline.core.io") < layer("pipeline.models.base") < layer("pipeline.stages.predict")
