"""The house's measures of src/bertpretrain, read from the source with `ast` (nothing imported):

  (a) modules over 300 lines and functions over 60,
  (b) import cycles among bertpretrain modules, counting imports at module level and inside
      functions (those under `if TYPE_CHECKING:` never run, so they do not count),
  (c) every function with a parameter annotated `Config` or named `cfg`: who takes the whole
      config.

Run from the repository root: `python scripts/house_check.py [SRC]` (SRC defaults to src/).
It prints one section per measure, "none" where a section is empty, and always exits 0.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

MAX_MODULE, MAX_FUNCTION = 300, 60


def modules(src: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under src/bertpretrain."""
    found = {}
    for path in sorted((src / "bertpretrain").rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def functions(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def sizes(mods: dict[str, Path], trees: dict[str, ast.AST]) -> list[str]:
    out = []
    for name, path in mods.items():
        lines = len(path.read_text().splitlines())
        if lines > MAX_MODULE:
            out.append(f"{path}: module of {lines} lines")
        for f in functions(trees[name]):
            length = f.end_lineno - f.lineno + 1
            if length > MAX_FUNCTION:
                out.append(f"{path}:{f.lineno}: {f.name} is {length} lines")
    return out


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")


def imports(name: str, tree: ast.AST, mods: dict[str, Path]) -> set[str]:
    """The bertpretrain modules `name` imports, anywhere but under `if TYPE_CHECKING:`."""
    package = name if mods[name].name == "__init__.py" else name.rpartition(".")[0]
    found, todo = set(), [tree]
    while todo:
        node = todo.pop()
        todo += [c for c in ast.iter_child_nodes(node) if not _type_checking(c)]
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([package.rsplit(".", node.level - 1)[0], base]).strip(".")
            found |= {
                f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names
            }
    return {m for m in found if m in mods and m != name}


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), list(graph[start])
    while todo:
        v = todo.pop()
        if v not in seen:
            seen.add(v)
            todo += graph[v]
    return seen


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other, directly or through others."""
    reach = {v: _reachable(graph, v) for v in graph}
    groups = {
        frozenset({v} | {w for w in reach[v] if v in reach[w]}) for v in graph if v in reach[v]
    }
    return sorted(sorted(g) for g in groups)


def whole_config(mods: dict[str, Path], trees: dict[str, ast.AST]) -> list[str]:
    out = []
    for name, path in mods.items():
        for f in functions(trees[name]):
            for arg in f.args.posonlyargs + f.args.args + f.args.kwonlyargs:
                shown = ast.unparse(arg.annotation) if arg.annotation else "?"
                if arg.arg == "cfg" or shown.split(" | ")[0].strip("'\"") == "Config":
                    out.append(f"{path}:{f.lineno}: {f.name}({arg.arg}: {shown})")
    return out


def main(src: Path) -> None:
    mods = modules(src)
    trees = {name: ast.parse(path.read_text(), str(path)) for name, path in mods.items()}
    graph = {name: imports(name, trees[name], mods) for name in mods}
    sections = {
        f"modules over {MAX_MODULE} lines, functions over {MAX_FUNCTION}": sizes(mods, trees),
        "import cycles": [" <-> ".join(c) for c in cycles(graph)],
        "parameters annotated Config or named cfg": whole_config(mods, trees),
    }
    for title, lines in sections.items():
        print(f"== {title}: {len(lines)}")
        print("\n".join(f"  {line}" for line in lines) or "  none")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "src"))
