"""The package's architecture, as a test: imports point one way, no cycles, no private names.

Data flows down the layers of ``LAYERS`` (the package docstring and BLUEPRINT section 2 state
the same order); a module may import modules of its own layer's package or of lower layers,
never of a higher layer or of another package on the same layer. Function-level imports count.
Every import between two modules of the package is read with ``ast``, so the rule holds for the
code as written, not for what happens to be imported at run time.
"""
import ast
import importlib
from pathlib import Path

import pytest

import openmm_geom

ROOT = Path(openmm_geom.__file__).parent

# Lowest first. Each entry is a top-level module or subpackage of openmm_geom.
LAYERS = [
    {"errors", "units", "arguments", "version", "settings"},
    {"io", "threads", "progress"},
    {"parallel"},
    {"ops"},
    {"data"},
    {"models"},
    {"modelfile"},
    {"contract"},
    {"training", "simulate"},
    {"export"},
    {"torchcv_plugin", "_torchcv_plugin", "_native"},
    {"openmm", "native"},
    {"analysis"},
    {"workflows", "_context_probe"},
    {"demo", "doctor"},
    {"cli"},
]
# compiled or generated modules that live beside the sources only once built
GENERATED = {"openmm_geom.torchcv_plugin", "openmm_geom._torchcv_plugin", "openmm_geom._native"}
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path):
    """(line, target module, imported names) of every import of ``openmm_geom`` in ``path``."""
    return _imports_in(path.read_text(), _module_name(path), path.name == "__init__.py")


def _imports_in(source: str, name: str, is_package: bool):
    package = name if is_package else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "openmm_geom" or target.startswith("openmm_geom."):
                yield node.lineno, target, [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("openmm_geom"):
                    yield node.lineno, alias.name, []


def _graph():
    modules = {name: None for name in GENERATED}
    for path in sorted(ROOT.rglob("*.py")):
        modules[_module_name(path)] = path
    edges = {}
    for name, path in modules.items():
        if path is None:
            continue
        for line, target, names in _imports(path):
            # "from package import module" imports a module, not a name
            targets = [f"{target}.{n}" if f"{target}.{n}" in modules else target for n in names] \
                or [target]
            for resolved in targets:
                edges.setdefault(name, []).append((line, resolved, names))
    return modules, edges


MODULES, EDGES = _graph()


def _unit(module: str) -> str:
    """The layer unit of a module: its top-level module or subpackage under openmm_geom."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_module_has_a_layer():
    units = {_unit(m) for m in MODULES} - {""}
    assert units <= set(RANK), f"modules without a layer in LAYERS: {sorted(units - set(RANK))}"


def test_imports_point_down_the_layers():
    wrong = []
    for module, edges in EDGES.items():
        source = _unit(module)
        if source == "":  # the package __init__ sits above everything
            continue
        for line, target, _ in edges:
            unit = _unit(target)
            if unit in ("", source):
                if unit == "":
                    wrong.append(f"{module}:{line} imports the package root {target}")
                continue
            if RANK[unit] >= RANK[source]:
                wrong.append(f"{module}:{line} -> {target} ({source} is layer {RANK[source]}, "
                             f"{unit} layer {RANK[unit]})")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_no_import_cycles():
    graph = {m: sorted({t for _, t, _ in EDGES.get(m, []) if t in MODULES and t != m})
             for m in MODULES}
    # A package's __init__ re-exporting its modules is not a cycle of the modules' own making.
    for module in graph:
        graph[module] = [t for t in graph[module]
                         if not (MODULES[t] is not None and MODULES[t].name == "__init__.py"
                                 and module.startswith(t + "."))]
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _parent(module: str) -> str:
    return module.rsplit(".", 1)[0]


def test_no_private_name_used_across_modules():
    wrong = []
    for module, edges in EDGES.items():
        for line, target, names in edges:
            if target == module:
                continue
            # A private module is private to its package: importable by its siblings only.
            parts = target.split(".")
            private = [i for i, part in enumerate(parts) if _is_private(part)]
            owner = ".".join(parts[:private[-1]]) if private else ""
            if private and not (module == owner or module.startswith(owner + ".")):
                wrong.append(f"{module}:{line} imports private module {target}")
            for name in names:
                if _is_private(name) and target != f"{_parent(module)}.{name}" \
                        and f"{target}.{name}" not in MODULES:
                    wrong.append(f"{module}:{line} imports private name {name} from {target}")
                elif _is_private(name) and f"{target}.{name}" in MODULES \
                        and not (module == target or module.startswith(target + ".")):
                    wrong.append(f"{module}:{line} imports private module {target}.{name}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("package", sorted({m for m, p in MODULES.items()
                                            if p is not None and p.name == "__init__.py"}))
def test_every_package_declares_its_public_names(package):
    module = importlib.import_module(package)
    assert isinstance(getattr(module, "__all__", None), list), f"{package} has no __all__"
    missing = [name for name in module.__all__
               if not hasattr(module, name) and f"{package}.{name}" not in MODULES]
    assert not missing, f"{package}.__all__ lists names it does not define: {missing}"


def test_the_layering_test_sees_a_violation():
    """The checker itself: an upward, a private and a relative import are all resolved."""
    source = ("from ..openmm import create_system\n"
              "from ..models.torchmdnet import _hidden\n"
              "def f():\n    from . import datagen\n")
    edges = list(_imports_in(source, "openmm_geom.data.probe", False))
    assert [(target, names) for _, target, names in edges] == [
        ("openmm_geom.openmm", ["create_system"]),
        ("openmm_geom.models.torchmdnet", ["_hidden"]),
        ("openmm_geom.data", ["datagen"])]
    assert RANK[_unit("openmm_geom.openmm")] > RANK["data"]
