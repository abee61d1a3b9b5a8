"""The package's floors (README, "Layout"): every module imports only from its own floor or
below, h5py appears only in the store's two modules and matplotlib only in plots.py."""

import ast
from pathlib import Path

import zgdyn

FLOORS = {
    "core": "config data model flat step optim hooks train ensemble",
    "store": "store integrity journal budget runner",
    "analysis": "fourier growth hessian hvp krylov stability sharpness perturb oscillator "
                "mechanism analyze",
    "batch": "suite sweep scorecard",
    "presentation": "cli report report_sections conclusions plots bench",
}
LEVEL = {m: i for i, names in enumerate(FLOORS.values()) for m in names.split()}
ROOT = Path(zgdyn.__file__).parent
OUTSIDE = {"__init__", "__main__"}  # the package's front door and `python -m zgdyn`


def _imports(path):
    """(line, module) of every import in a file, zgdyn's own as 'zgdyn.<module>'."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 1:
                names = [node.module] if node.module else [a.name for a in node.names]
                yield from ((node.lineno, f"zgdyn.{n.split('.')[0]}") for n in names)
            elif node.module:
                yield node.lineno, node.module


def test_every_module_has_a_floor():
    modules = {p.stem for p in ROOT.glob("*.py")} - OUTSIDE
    assert modules == set(LEVEL), (modules - set(LEVEL), set(LEVEL) - modules)


def test_imports_point_down_and_h5py_and_matplotlib_stay_in_their_rooms():
    wrong = []
    for path in sorted(ROOT.glob("*.py")):
        me = path.stem
        for line, mod in _imports(path):
            top = mod.split(".")[0]
            if top == "h5py" and me not in ("store", "integrity"):
                wrong.append(f"{me}:{line} imports h5py")
            if top == "matplotlib" and me != "plots":
                wrong.append(f"{me}:{line} imports matplotlib")
            if me in OUTSIDE or not mod.startswith("zgdyn."):
                continue
            other = mod.split(".")[1]
            if other in LEVEL and LEVEL[other] > LEVEL[me]:  # (zgdyn.__version__: the root)
                wrong.append(f"{me}:{line} imports {other}, a floor above it")
    assert wrong == []


def test_the_check_sees_an_upward_import(tmp_path):
    """The walk finds an import inside a function, the way the lazy ones are written."""
    bad = tmp_path / "train.py"
    bad.write_text("def f():\n    from .hessian import make_hvp\n    import h5py\n")
    assert list(_imports(bad)) == [(2, "zgdyn.hessian"), (3, "h5py")]
