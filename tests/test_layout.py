"""The README's layout is the source tree: every module and package under src/ratkit is named in
it, in its own package's entry, and nothing it names is missing; the paths the docs give exist."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "ratkit"
NAME = re.compile(r"(?<![\w./-])(\w+)(\.py\b|/)")  # `loop.py`, `train/`; not `ratkit.device_check` or `a/b.py`
# files the docs introduce as ones a reader would add
NEW_FILES = {"src/ratkit/methods/mixed_at.py", "src/ratkit/data/formats/<format>.py"}


def _layout_entries() -> dict[str, str]:
    """``{head: text}`` for each entry of the ``src/ratkit/`` block: an entry starts at six spaces'
    indent, its head is what comes before the first two-space gap, its text runs over the deeper
    indented lines that follow."""
    text = (ROOT / "README.md").read_text()
    block = text[text.index("## Layout"):].split("\n")
    start = block.index("    src/ratkit/") + 1
    entries: dict[str, str] = {}
    head = None
    for line in block[start:]:
        if not line.startswith("      "):
            break
        if line[6] != " ":
            head, _, rest = line[6:].partition("  ")
            entries[head] = head + " " + rest
        else:
            entries[head] += " " + line.strip()
    return entries


def _named(text: str) -> set[str]:
    return {stem + suffix for stem, suffix in NAME.findall(text)}


def _on_disk(directory: Path) -> set[str]:
    return ({p.name for p in directory.glob("*.py")}
            | {p.name + "/" for p in directory.iterdir() if p.is_dir() and p.name != "__pycache__"})


def test_the_readme_layout_names_every_top_level_module_and_package_and_nothing_else():
    entries = _layout_entries()
    heads = set().union(*(_named(head) for head in entries))
    assert heads == _on_disk(PACKAGE)


def test_each_package_entry_names_every_module_of_its_package_and_only_those():
    for head, text in _layout_entries().items():
        if not re.fullmatch(r"\w+/", head) or not (PACKAGE / head / "__init__.py").exists():
            continue  # configs/ (data), training/ (an alias of train/)
        package = PACKAGE / head
        modules = {p.relative_to(package).as_posix() for p in package.rglob("*.py")
                   if p.name != "__init__.py" and "__pycache__" not in p.parts}
        named = _named(text) - {head}
        for module in modules:  # a sub-package may list its modules by name (formats/: `idx`, `cifar`, ...)
            listed = "/" in module and re.search(rf"\b{Path(module).stem}\b", text)
            assert Path(module).name in named or listed, f"{head}: {module} not named"
        for name in named:
            assert (package / name).exists() or any(package.rglob(name)), f"{head}: names {name}, not in the tree"


def test_every_source_path_the_readme_and_docs_give_exists():
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for path in re.findall(r"src/ratkit/[\w./<>-]*\w", doc.read_text()):
            assert path in NEW_FILES or (ROOT / path).exists(), f"{doc.name}: {path}"
