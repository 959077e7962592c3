"""No import circle among the modules of src/ratkit, and the README's layout ordered by floor: the
graph is read from the source with ``ast`` (module-level and function-level imports alike), so an
arrow that runs back up fails here even where Python would tolerate it at run time."""

import ast
from pathlib import Path

from helpers import SRC
from test_layout import _layout_entries, _named

PACKAGE = Path(SRC) / "ratkit"


def _module_names(root: Path) -> dict[str, Path]:
    """``{"ratkit.data.synthetic": path, "ratkit.data": .../data/__init__.py, ...}``"""
    names = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _imports(name: str, modules: dict[str, Path]) -> set[str]:
    """The ratkit modules that module ``name`` imports anywhere in its body.

    Importing ``a.b.c`` runs ``a/__init__``, ``a/b/__init__`` and ``a/b/c``; the packages that
    hold ``name`` itself are already being imported then, so only the others count. ``from a
    import x`` imports the submodule ``a.x`` when there is one, else it reads ``x`` from ``a``."""
    path = modules[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    own = {".".join(package.split(".")[:i]) for i in range(1, package.count(".") + 2)}
    found: set[str] = set()

    def add(target: str) -> None:
        parts = target.split(".")
        found.update(m for m in (".".join(parts[:i]) for i in range(1, len(parts))) if m in modules and m not in own)
        if target in modules:
            found.add(target)

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "ratkit":
                    add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != "ratkit":
                continue
            for alias in node.names:
                add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source)
    found.discard(name)
    return found


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    modules = _module_names(root)
    return {name: _imports(name, modules) for name in modules}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle ``[a, b, ..., a]`` in ``graph``, or None (depth-first, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_module_of_ratkit_imports_itself_around_a_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def _top_unit(module: str) -> str:
    """The README layout's name of the top-level module or package that holds ``module``."""
    parts = module.split(".")
    if len(parts) == 1:
        return "__init__.py"
    return parts[1] + "/" if (PACKAGE / parts[1]).is_dir() else parts[1] + ".py"


def test_the_readme_layout_lists_each_module_above_every_module_it_imports():
    """The layout is ordered by floor, the top first: an entry imports only entries below it."""
    floor = {name: i for i, head in enumerate(_layout_entries()) for name in _named(head)}
    upward = sorted({(_top_unit(a), _top_unit(b)) for a, targets in import_graph().items() for b in targets
                     if floor[_top_unit(a)] > floor[_top_unit(b)]})
    assert not upward, "imports of an entry listed above the importer: " + ", ".join(f"{a} -> {b}" for a, b in upward)


def test_the_graph_sees_relative_absolute_function_level_and_submodule_imports(tmp_path):
    """The reader of the graph is checked on a small package of its own, so the test above cannot
    pass by missing arrows (nor fail on the packages a module sits in, which are imported first)."""
    pkg = tmp_path / "ratkit"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "from .a import f\n",
        "a.py": "def f():\n    from ratkit.sub import deep\n",  # function level, absolute, a submodule
        "sub/__init__.py": "",
        "sub/deep.py": "from .. import b\n",  # relative, a submodule of the parent
        "b.py": "import os\nimport ratkit.sub.leaf\n",  # the package on the way counts
        "sub/leaf.py": "from .. import f\n",  # a name of the parent package: its __init__
    }
    for rel, text in files.items():
        (pkg / rel).write_text(text)
    graph = import_graph(pkg)
    assert graph["ratkit"] == {"ratkit.a"}
    assert graph["ratkit.a"] == {"ratkit.sub", "ratkit.sub.deep"}
    assert graph["ratkit.sub.deep"] == {"ratkit.b"}
    assert graph["ratkit.b"] == {"ratkit.sub", "ratkit.sub.leaf"}
    assert graph["ratkit.sub.leaf"] == {"ratkit"}
    assert find_cycle(graph) == ["ratkit", "ratkit.a", "ratkit.sub.deep", "ratkit.b", "ratkit.sub.leaf", "ratkit"]
    (pkg / "sub" / "leaf.py").write_text("import os\n")
    assert find_cycle(import_graph(pkg)) is None
