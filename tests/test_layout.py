"""The package layout: imports point one way (core and data <- methods <- run <- paper),
checked on the source of every module (an import inside a function counts too)."""
import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "maml_tf"
# Layer of each subpackage; a module may import its own layer and the layers below.
LAYERS = {"runtime": 0, "core": 1, "data": 1, "methods": 2, "run": 3, "paper": 4}
# Which layers each may import (core and data are side by side: neither imports the other).
ALLOWED = {
    "runtime": {"runtime"},
    "core": {"core", "runtime"},
    "data": {"data", "runtime"},
    "methods": {"methods", "core", "runtime"},
    "run": {"run", "methods", "core", "data", "runtime"},
    "paper": {"paper", "run", "methods", "core", "data", "runtime"},
}


def layer_of(parts):
    """The layer of a module path inside maml_tf (parts after 'maml_tf')."""
    return parts[0].replace(".py", "") if parts else None


def imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("maml_tf"):
            mods = [node.module + "." + a.name for a in node.names] if node.module == "maml_tf" else [node.module]
            yield from mods
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("maml_tf"))


def test_imports_point_one_way():
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).parts
        if len(rel) == 1:  # top level: __init__ (lazy exports) and the command aliases
            continue
        here = layer_of(rel)
        for mod in imports(path):
            parts = mod.split(".")[1:]
            there = layer_of(parts)
            if there is None:
                continue
            if there not in ALLOWED[here]:
                bad.append(f"{'/'.join(rel)} ({here}) imports {mod} ({there})")
    assert not bad, "\n".join(bad)


def test_every_subpackage_has_its_place():
    subpackages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert subpackages == ["core", "data", "methods", "paper", "run"]
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert top == ["__init__.py", "crosscheck.py", "export.py", "runtime.py"]
