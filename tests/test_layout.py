"""The package's architecture, checked from its imports: one folder a family, families in layers
that only import downwards, no import cycles, and no module so long it hides several ideas.

Layers, lowest first: the leaves (`validate`, `logs`, `files`, `driver`, `ops`, `viz`), `data`,
`models`, `metrics`, `explainers`, `runner`, `explore`, `cli`. A module may import its own family
and the layers below it; ``deepvid_jax/__init__.py`` (the public facade) may import anything."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "deepvid_jax"
LEAVES = ("validate", "logs", "files", "driver", "ops", "viz")
LAYERS = ("leaf", "data", "models", "metrics", "explainers", "runner", "explore", "cli")
LONG = 550  # lines; a longer module states why in its docstring ("... is long because ...")
MAX_DEPTH = 11  # the longest chain of module-level imports (12 in the flat package, counted alike)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def family(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "facade"
    return "leaf" if parts[1] in LEAVES else parts[1]


def _target(node: ast.ImportFrom | ast.Import, alias: ast.alias) -> str | None:
    if isinstance(node, ast.Import):
        name = alias.name
    elif node.level or not node.module:
        return None
    else:
        sub = f"{node.module}.{alias.name}"
        name = sub if sub in MODULES else node.module
    return name if name.split(".")[0] == "deepvid_jax" else None


def imports(module: str, top_level_only: bool) -> set[str]:
    """The package's modules that ``module`` imports (all imports, or only module-level ones)."""
    tree = ast.parse(MODULES[module].read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                t = _target(node, alias)
                while t is not None and t not in MODULES:  # a name inside a module
                    t = t.rpartition(".")[0] or None
                if t is not None and t != module:
                    found.add(t)
    return found


def test_every_module_is_in_a_known_layer():
    unknown = {m for m in MODULES if family(m) not in (*LAYERS, "facade")}
    assert not unknown, f"modules outside the known layers {LAYERS}: {sorted(unknown)}"


def test_nothing_imports_upward():
    upward = []
    for m in MODULES:
        if family(m) == "facade":
            continue
        for t in imports(m, top_level_only=False):
            if family(t) == "facade":
                upward.append(f"{m} -> {t} (the facade)")
            elif LAYERS.index(family(t)) > LAYERS.index(family(m)):
                upward.append(f"{m} ({family(m)}) -> {t} ({family(t)})")
    assert not upward, "imports that go up a layer:\n" + "\n".join(sorted(upward))


def _graph() -> dict[str, set[str]]:
    return {m: imports(m, top_level_only=True) for m in MODULES}


def test_no_import_cycles():
    graph, state, cycles = _graph(), {}, []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = "open"
        for t in sorted(graph[m]):
            if state.get(t) == "open":
                # a package importing its own submodules (its __init__ re-exporting) is a cycle
                # only when the submodule imports the package back: that is this case
                cycles.append(" -> ".join([*stack[stack.index(t):], t]))
            elif t not in state:
                visit(t, [*stack, t])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_import_graph_is_shallow():
    graph, depth = _graph(), {}

    def longest(m: str) -> int:
        if m not in depth:
            depth[m] = 0  # guards recursion; cycles fail their own test
            depth[m] = 1 + max((longest(t) for t in graph[m]), default=0)
        return depth[m]

    deepest = max(MODULES, key=longest)
    assert longest(deepest) <= MAX_DEPTH, f"{deepest} sits {longest(deepest)} imports deep"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_long_modules_say_why(module):
    path = MODULES[module]
    lines = len(path.read_text().splitlines())
    if lines > LONG:
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        assert "long because" in doc, (f"{path.relative_to(PACKAGE.parent)} has {lines} lines: "
                                       "split it by idea or say in its docstring why it is long "
                                       "because ...")


def test_importing_the_library_and_its_command_line_leaves_matplotlib_out():
    """matplotlib (half a second) is imported at the first figure, not by `import deepvid_jax`
    or by a `deepvid` command that draws nothing."""
    code = ("import sys, deepvid_jax, deepvid_jax.cli.main; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]", out

