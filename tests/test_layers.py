"""The package's layers: every import points down (or sideways within a layer), no module imports itself back
through a cycle, and the judging layer is plain Python (no torch), so a log can be judged anywhere.

Read from each file's ``ast`` (imports inside functions included), so the shape holds without running anything.
"""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "yolo_gradmon"

# bottom to top: a module may import from its own layer or a lower one
LAYERS = [
    ("config", "fields"),            # options, log prefix; the step record's schema
    ("structure",),                  # parameter layout, layer graph, activation registry
    ("measure",),                    # on-device statistics, hooks, the schedule
    ("judge",),                      # rules and cause diagnosis over logged numbers
    ("record",),                     # the log, its reader, derived tables
    ("show",),                       # sinks, figures, HTML report
    ("hook", "host_worker", "monitor", "trainer", "preflight", "testing", "demo"),  # the Ultralytics glue, the host thread,
    # and ground-truth utilities
    ("ablate",),                     # swaps, grids, runner, comparison
    ("cli", "__init__"),             # the command line and the public package surface
]
RANK = {name: r for r, names in enumerate(LAYERS) for name in names}
TORCH_FREE = ("fields", "judge", "record", "structure.graph", "structure.activations", "host_worker")


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Package modules imported by ``name`` (resolved relative imports; ``from x import y`` counts ``x.y`` when
    ``x.y`` is a module)."""
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg and name != "__init__" else name.split(".")[:-1]
    if name == "__init__":
        base = []
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                root = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                mod = ".".join(root + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("yolo_gradmon"):
                mod = node.module[len("yolo_gradmon"):].lstrip(".")
            else:
                continue
            targets = [f"{mod}.{a.name}" if mod else a.name for a in node.names] + [mod]
        elif isinstance(node, ast.Import):
            targets = [a.name[len("yolo_gradmon"):].lstrip(".") for a in node.names if a.name.startswith("yolo_gradmon.")]
        for t in targets:
            if t in known:
                out.add(t)
                break
    return {t for t in out if t != name}


def layer(name: str) -> int:
    return RANK[name.split(".")[0]]


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def test_every_module_has_a_layer():
    missing = [m for m in modules() if m.split(".")[0] not in RANK]
    assert not missing, f"modules outside every layer (add them to LAYERS): {missing}"


def test_imports_point_down():
    upward = [f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
              for a, deps in graph().items() for b in deps if layer(b) > layer(a)]
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    g = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(g[n]):
            if state.get(m) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(m):] + [m]))
            if m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(g):
        if n not in state:
            visit(n)


@pytest.mark.parametrize("prefix", TORCH_FREE)
def test_judging_and_recording_need_no_torch(prefix):
    offenders = []
    for name, path in modules().items():
        if name == prefix or name.startswith(prefix + "."):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
                offenders += [f"{name}: {n}" for n in names if n.split(".")[0] in ("torch", "ultralytics")]
            for dep in graph()[name]:
                if not any(dep == p or dep.startswith(p + ".") for p in TORCH_FREE + ("config",)):
                    offenders.append(f"{name} imports {dep}")
    assert not offenders, offenders


def test_the_walk_sees_imports():
    """The checker itself: a module importing upward is caught (so the tests above cannot pass vacuously)."""
    g = graph()
    assert "measure.params" in g["monitor"] and "structure.layout" in g["measure.params"]
    assert "judge.rules" in g["record.summary"] and "config" in g["judge.rules"]
