"""The package's shape: layers that import only from the layers before them, small modules and
functions, one command line."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "rsgh"
SHARED = {"config", "files", "paths", "errors", "__init__", "__main__", "metrics", "gist"}
ORDER = ["data", "method", "eval", "train", "book", "index", "cli"]  # book and index are both drivers


def layer(module: str) -> str:
    """'rsgh.train.loop' -> 'train'; shared modules -> 'shared'."""
    parts = module.split(".")
    first = parts[1] if len(parts) > 1 else "__init__"
    return "shared" if first in SHARED or first.startswith("__") else first


def imports(path: Path) -> set[str]:
    """Every rsgh module a file imports (top level or inside functions)."""
    here = "rsgh." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
    package = here.rsplit(".", 1)[0] if path.name != "__init__.py" else here
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("rsgh"):
                found |= {f"{target}.{a.name}" if not node.module else target for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("rsgh")}
    return found


def test_each_layer_imports_only_from_the_layers_before_it():
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        mine = layer("rsgh." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts))
        for target in imports(path):
            theirs = layer(target)
            if theirs == "shared" or theirs == mine or mine == "shared" and path.stem in ("__init__", "__main__",
                                                                                          "metrics", "gist"):
                continue
            allowed = ORDER[:ORDER.index(mine)] if mine in ORDER else []
            if mine == "index":
                allowed = [x for x in allowed if x != "book"]
            if theirs not in allowed:
                wrong.append(f"{path.relative_to(PACKAGE)} ({mine}) imports {target} ({theirs})")
    assert not wrong, "\n".join(wrong)


def test_no_module_over_450_lines_and_no_function_over_80():
    long_modules, long_functions = [], []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        if len(text.splitlines()) > 450:
            long_modules.append(f"{path.relative_to(PACKAGE)}: {len(text.splitlines())}")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80:
                long_functions.append(f"{path.relative_to(PACKAGE)}:{node.name}: {node.end_lineno - node.lineno + 1}")
    assert not long_modules and not long_functions, long_modules + long_functions


def test_one_main_in_the_package():
    mains = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
             if any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in ast.parse(p.read_text()).body)]
    assert mains == ["cli.py"]


def test_public_api_and_old_import_paths():
    import rsgh
    from rsgh.gist import gist
    from rsgh.metrics import mean_average_precision

    assert rsgh.mean_average_precision is mean_average_precision and callable(gist)
    for name in ("train_model", "load_model", "recall_at_n", "make_config", "Config", "Runtime"):
        assert callable(getattr(rsgh, name)), name


def test_every_module_is_in_a_regular_package_and_reachable_from_rsgh():
    """Every folder of the package has an ``__init__.py`` with its one job, so ``pkgutil`` (and doc tools)
    find every module; a bare ``import rsgh`` reaches the subpackages and old modules as attributes."""
    import importlib
    import pkgutil

    import rsgh

    folders = sorted(p.parent for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)
    for folder in set(folders):
        init = folder / "__init__.py"
        assert init.exists(), f"{folder.relative_to(PACKAGE.parent)} has no __init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and doc.strip(), f"{init.relative_to(PACKAGE.parent)} has no docstring saying its job"
    found = {m.name for m in pkgutil.walk_packages(rsgh.__path__, "rsgh.")}
    files = {"rsgh." + ".".join(p.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__")
             for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts} - {"rsgh", "rsgh.__init__"}
    assert files <= found, sorted(files - found)
    for name in ("gist", "metrics", "data", "method", "eval", "train", "book", "index"):
        assert getattr(rsgh, name) is importlib.import_module(f"rsgh.{name}"), name
    assert callable(rsgh.gist.gist) and "gist" in dir(rsgh)
