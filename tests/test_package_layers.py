"""The package's layers import only downward, so data flows one way and no library module knows the CLI."""

import ast
from pathlib import Path

import pneumoscan

PACKAGE = Path(pneumoscan.__file__).parent

# Lowest first. A module may import its own layer and any layer listed before it, never one after it.
LAYERS = [
    {"errors", "atomic", "plotting", "settings", "launch", "__init__"},
    {"data", "metrics"},
    {"config"},
    {"models"},
    {"training"},
    {"evaluation"},
    {"serving", "pipeline"},
    {"cli", "__main__"},
]


def _layer_of(name: str) -> int:
    return next(rank for rank, members in enumerate(LAYERS) if name in members)


def _imports() -> list[tuple[str, str, str]]:
    """(importing file, its top-level part, imported top-level part) for every pneumoscan import."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        part = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            modules = ([node.module] if isinstance(node, ast.ImportFrom) and node.module
                       else [alias.name for alias in node.names] if isinstance(node, ast.Import) else [])
            for module in modules:
                if module == "pneumoscan" or module.startswith("pneumoscan."):
                    pieces = module.split(".")
                    found.append((str(path.relative_to(PACKAGE)), part, pieces[1] if len(pieces) > 1 else "__init__"))
    return found


def test_every_package_part_has_a_layer() -> None:
    parts = {path.relative_to(PACKAGE).parts[0].removesuffix(".py") for path in PACKAGE.rglob("*.py")}
    assert parts - {"weights"} <= set().union(*LAYERS)


def test_imports_go_only_downward() -> None:
    upward = [f"{file} imports pneumoscan.{target}" for file, part, target in _imports()
              if _layer_of(target) > _layer_of(part)]
    assert upward == []


def test_the_check_sees_imports() -> None:
    imports = _imports()
    assert ("cli/commands/train.py", "cli", "pipeline") in {(f.replace("\\", "/"), p, t) for f, p, t in imports}
    assert len(imports) > 100


MAX_FUNCTION_LINES = 100


def test_no_function_is_over_a_hundred_lines() -> None:
    """A newcomer reads a function in one screen or two: none in the package runs past MAX_FUNCTION_LINES."""
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []


def _module_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere: at the top, inside functions or under TYPE_CHECKING."""
    modules: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pneumoscan"):
                found |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names if alias.name.startswith("pneumoscan")}
        modules[name] = found
    return {name: {d for d in found if d in modules and d != name} for name, found in modules.items()}


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Groups of modules that import each other, directly or round a loop (Tarjan's strongly connected parts)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            part = []
            while True:
                top = stack.pop()
                part.append(top)
                if top == node:
                    break
            if len(part) > 1:
                circles.append(sorted(part))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return circles


def test_no_import_circles_even_inside_functions_or_type_checking() -> None:
    assert _circles(_module_graph()) == []


def test_the_circle_check_sees_a_circle() -> None:
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def test_the_command_line_and_the_settings_import_without_torch() -> None:
    """`pneumoscan --help`, reading a recipe and checking settings never wait for torch to import (seconds): it is
    imported where pixels or a model are touched."""
    import subprocess
    import sys

    code = ("import sys, pneumoscan.cli.main, pneumoscan.config; "
            "pneumoscan.cli.main.build_parser().parse_args(['train', '--out', 'x']); "
            "print(sorted(m for m in ('torch', 'kornia', 'monai') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
