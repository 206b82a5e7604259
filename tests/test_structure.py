"""The package's shape: data flows one way between its packages, and no import circles.

Imports inside functions count, and so do parent packages: importing ``lesion.experiments.job`` runs
``lesion/experiments/__init__.py`` first, so it is an import of ``lesion.experiments`` too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Each package may import the packages of lower rank, never one of its own rank or above (the same
# package aside). ``lesion`` itself (the lazy public API) may import anything and nothing imports it.
RANKS = {
    "errors": 0,
    "util": 1,
    "data": 2,
    "core": 3,
    "models": 4, "engine": 4,
    "backends": 5,
    "analyses": 6, "training": 6,
    "pipeline": 7,
    "roles": 8,
    "experiments": 9, "bench": 9,
    "report": 10, "serve": 10,
    "cli": 11,
    "metrics": 12, "replacements": 12,  # the public namespaces: nothing inside lesion imports them
}  # fmt: skip


def modules() -> dict[str, Path]:
    out = {}
    for f in (SRC / "lesion").rglob("*.py"):
        name = ".".join(f.relative_to(SRC).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = f
    return out


def imports(source: str, mods: dict[str, Path], module: str = "") -> set[str]:
    """The lesion modules ``source`` (the text of ``module``) imports, with every parent package each of
    them runs (``lesion`` itself, whose public names load lazily, and ``module``'s own parents aside)."""
    tree = ast.parse(source)
    typing_only = {
        id(n) for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)
    }  # fmt: skip
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lesion"):
            subs = {f"{node.module}.{a.name}" for a in node.names} & set(mods)
            found |= subs
            if len(subs) < len(node.names):  # names defined in node.module itself
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("lesion")}
    with_parents = set()
    for name in found:
        parts = name.split(".")
        with_parents |= {name} | {".".join(parts[:i]) for i in range(2, len(parts))}
    own_parents = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
    return (with_parents - (own_parents - {"lesion"} if module else set())) & set(mods)


def package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def wrong_way(module: str, source: str, mods: dict[str, Path]) -> list[str]:
    """The imports of ``module`` that run against the allowed direction."""
    own = package(module)
    if own == "":
        return []
    bad = []
    for target in sorted(imports(source, mods, module)):
        other = package(target)
        if other == own:
            continue
        if other == "" or other not in RANKS or RANKS[other] >= RANKS[own]:
            bad.append(f"{module} -> {target}")
    return bad


def test_every_package_has_a_rank_and_a_docstring():
    mods = modules()
    for name in {package(m) for m in mods} - {""}:
        assert name in RANKS, f"lesion.{name} has no place in RANKS"
        if name in mods and (SRC / "lesion" / name).is_dir():
            assert ast.get_docstring(ast.parse(mods[f"lesion.{name}"].read_text())), name


def test_imports_run_one_way():
    mods = modules()
    bad = [b for m, f in mods.items() for b in wrong_way(m, f.read_text(), mods)]
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    ("module", "line"),
    [
        ("lesion.core.runner", "from lesion.engine import Engine"),
        ("lesion.core.lesions", "    from lesion.analyses.sweep import sweep"),  # lazy, inside a function
        ("lesion.engine.batched", "import lesion.analyses.curves"),
        ("lesion.backends.ray", "from lesion.experiments.job import execute"),
        ("lesion.analyses.paper", "from lesion.experiments.store import Store"),
        ("lesion.data._text", "from lesion import sweep"),
    ],
)
def test_an_import_against_the_layering_is_caught(module, line):
    mods = modules()
    source = mods[module].read_text() + "\n" + line.replace("    ", "def _f():\n    ", 1) + "\n"
    assert wrong_way(module, source, mods), f"{line!r} in {module} went unnoticed"


def test_no_import_circles():
    mods = modules()
    graph = {m: imports(f.read_text(), mods, m) - {m} for m, f in mods.items()}
    cycles = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append([*path[path.index(n) :], n])
            elif n not in state:
                visit(n, [*path, n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, f"import circles: {cycles[:3]}"
