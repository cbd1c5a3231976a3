"""The package's layers: imports point one way, pure math imports no Spark, Py4J lives in
one module, and ``import filterspark`` exposes the public API."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "filterspark"

#: Each layer may import only layers of a lower rank (and itself).
RANKS = {
    "errors": 0, "kernels": 1, "sources": 2, "demo": 3, "delta": 4, "engine": 5,
    "pipelines": 6, "outputs": 7, "cli": 8,
}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "filterspark" else None


def _imports(path: Path) -> list[tuple[str, int]]:
    """Every filterspark module the file imports, at any depth (function-local imports too)."""
    module = "filterspark." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__")
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: -node.level] if not path.name == "__init__.py" else module.split(".")[: len(module.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((name, node.lineno))
    return [(n, line) for n, line in found if n.startswith("filterspark")]


def test_imports_point_down_the_layers():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.name == "__init__.py" and len(rel.parts) == 1:
            continue  # the public API re-exports from every layer
        own = rel.parts[0].removesuffix(".py")
        for name, line in _imports(path):
            layer = _layer(name)
            if layer is not None and layer != own and RANKS[layer] > RANKS[own]:
                wrong.append(f"{rel}:{line} ({own}) imports {name} ({layer})")
    assert not wrong, "\n".join(wrong)


def test_kernels_and_sources_import_no_spark():
    code = (
        "import sys, pkgutil, importlib, filterspark.kernels, filterspark.sources, filterspark.sources.loaders\n"
        "for pkg in (filterspark.kernels, filterspark.sources, filterspark.sources.loaders):\n"
        "    for m in pkgutil.iter_modules(pkg.__path__):\n"
        "        importlib.import_module(pkg.__name__ + '.' + m.name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('pyspark', 'py4j', 'delta'))\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_py4j_is_used_in_one_module():
    users = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        if any(token in text for token in ("_jvm", "_jsparkSession", "_jsc", "py4j", "_gateway")):
            users.append(str(path.relative_to(PACKAGE)))
    assert users == ["delta/jvm.py"]


def test_import_filterspark_exposes_the_public_api():
    code = (
        "import filterspark, sys\n"
        "assert 'pyspark' not in sys.modules and 'torch' not in sys.modules  # lazy\n"
        "missing = [n for n in filterspark.__all__ if getattr(filterspark, n, None) is None]\n"
        "assert not missing, missing\n"
        "assert issubclass(filterspark.AnalyzeOptions, object) and callable(filterspark.run_extraction)\n"
        "from filterspark import FilterSparkError, build_session, Warehouse\n"
        "print(len(filterspark.__all__))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) >= 20


def test_one_error_base_class():
    from filterspark import errors

    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, BaseException)]
    roots = {c for c in classes if not any(issubclass(c, o) and c is not o for o in classes if o.__module__ == errors.__name__)}
    assert roots == {errors.FilterSparkError}
    import importlib

    outside = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        module = importlib.import_module(".".join(["filterspark", *rel.parts]).removesuffix(".__init__"))
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, BaseException) and value.__module__ == module.__name__:
                if not issubclass(value, errors.FilterSparkError):
                    outside.append(f"{module.__name__}.{value.__name__}")
    assert not outside, outside


def test_no_import_cycles_not_even_through_function_level_imports():
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        modules[".".join(["filterspark", *rel.parts]).removesuffix(".__init__")] = path
    graph = {}
    for name, path in modules.items():
        deps = set()
        for imported, _ in _imports(path):
            candidates = [imported, *(f"{imported}.{a}" for a in _imported_names(path, imported))]
            deps |= {c for c in candidates if c in modules and c != name}
        graph[name] = deps
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(trail[trail.index(dep):] + [dep]) if dep in trail else f"{node} -> {dep}")
            elif dep not in state:
                visit(dep, trail + [dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)


def _imported_names(path: Path, module: str) -> list[str]:
    """The names ``from module import a, b`` takes (they may be submodules)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and module.endswith(node.module):
            names += [a.name for a in node.names]
    return names
