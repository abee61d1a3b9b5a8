"""The package's floors (README, "Layout"): one subpackage per floor, each importing only
from its own floor or below; h5py appears only in the store's writer, reader and integrity
modules, matplotlib only in present/plots.py and present/suite_plots.py."""

import ast
from pathlib import Path

import zgdyn

FLOORS = ["core", "store", "analysis", "batch", "present cli"]  # bottom to top
LEVEL = {pkg: i for i, names in enumerate(FLOORS) for pkg in names.split()}
ROOT = Path(zgdyn.__file__).parent
OUTSIDE = {"__init__.py", "__main__.py"}  # the package's front door and `python -m zgdyn`
H5PY = {"store/writer.py", "store/reader.py", "store/integrity.py"}
MATPLOTLIB = {"present/plots.py", "present/suite_plots.py"}


def _modules():
    return sorted(p for p in ROOT.rglob("*.py") if p.relative_to(ROOT).as_posix() not in OUTSIDE)


def _imports(path, package):
    """(line, module) of every import in a file of subpackage `package`, zgdyn's own as
    'zgdyn.<subpackage>.<module>'."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 1:
                yield node.lineno, f"zgdyn.{package}.{node.module or ''}"
            elif node.level == 2:
                yield node.lineno, f"zgdyn.{node.module or ''}"
            elif node.module:
                yield node.lineno, node.module


def test_every_module_lives_in_a_floor():
    loose = [p.name for p in _modules() if p.parent == ROOT]
    assert loose == []
    assert {p.parent.name for p in _modules()} == set(LEVEL)


def test_imports_point_down_and_h5py_and_matplotlib_stay_in_their_rooms():
    wrong = []
    for path in _modules():
        rel = path.relative_to(ROOT).as_posix()
        me = path.parent.name
        for line, mod in _imports(path, me):
            top = mod.split(".")[0]
            if top == "h5py" and rel not in H5PY:
                wrong.append(f"{rel}:{line} imports h5py")
            if top == "matplotlib" and rel not in MATPLOTLIB:
                wrong.append(f"{rel}:{line} imports matplotlib")
            if not mod.startswith("zgdyn."):
                continue
            other = mod.split(".")[1]
            if other in LEVEL and LEVEL[other] > LEVEL[me]:  # (zgdyn.__version__: the root)
                wrong.append(f"{rel}:{line} imports {other}, a floor above it")
    assert wrong == []


def test_the_check_sees_an_upward_import(tmp_path):
    """The walk finds an import inside a function, the way the lazy ones are written."""
    bad = tmp_path / "train.py"
    bad.write_text("def f():\n    from ..analysis.hessian import make_hvp\n    import h5py\n"
                   "    from .step import FusedStep\n")
    assert list(_imports(bad, "core")) == [(2, "zgdyn.analysis.hessian"), (3, "h5py"),
                                           (4, "zgdyn.core.step")]


def test_every_module_declares_its_public_surface():
    """`__all__` in every module, naming only what the module has."""
    import importlib

    missing, dangling = [], []
    for path in _modules():
        name = "zgdyn." + path.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".")
        if path.name == "__init__.py":
            continue
        module = importlib.import_module(name)
        if not hasattr(module, "__all__"):
            missing.append(name)
        dangling += [f"{name}.{n}" for n in getattr(module, "__all__", [])
                     if not hasattr(module, n)]
    assert missing == [] and dangling == []
