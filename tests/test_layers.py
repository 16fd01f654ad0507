"""The library's import graph: no cycles, so any module can be read (and imported) before the ones using it."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imports_of(path: Path, everywhere: bool) -> set[str]:
    """``ls_video.*`` modules ``path`` imports at module level (``everywhere``: also inside functions)."""
    tree = ast.parse(path.read_text())
    nodes = ast.walk(tree) if everywhere else tree.body
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ls_video"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("ls_video")}
    return found


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt]
            if nxt not in state and (cycle := visit(nxt, stack + [nxt])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


# Lazy imports that close a cycle on purpose. hub -> pipeline: a Hub pipeline repo downloads as
# LatentShiftPipeline.download would load it (its components only), and the pipeline resolves ids through hub.
LAZY_CYCLES = {("ls_video.hub", "ls_video.pipeline")}


def test_core_modules_import_without_cycles():
    """Fails on a pair like components <-> pipeline, which only a lazy import inside a function kept working:
    core modules (``ls_video/*.py``) import each other without cycles, lazy imports included (but the listed
    ones), and without any cycle at module level."""
    core = {module_name(p): p for p in (ROOT / "ls_video").glob("*.py") if p.name != "__init__.py"}
    eager = {name: {m for m in imports_of(path, everywhere=False) if m in core} for name, path in core.items()}
    assert find_cycle(eager) is None, f"import cycle: {' -> '.join(find_cycle(eager))}"
    lazy = {name: {m for m in imports_of(path, everywhere=True) if m in core and (name, m) not in LAZY_CYCLES}
            for name, path in core.items()}
    assert find_cycle(lazy) is None, f"import cycle: {' -> '.join(find_cycle(lazy))}"


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
