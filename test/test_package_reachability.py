"""Every module of the installed package is reached by imports from an entry point (setup.py's console scripts: the
`mobilegeo` CLI and the ROS node; the replay driver; the launch files; modules run with ``python -m`` (a
``__main__`` block); what the tools/*.sh scripts run): code only the tests or the benchmarks use lives in test/ or
benchmarks/, not in the package."""

from __future__ import annotations

import re
from pathlib import Path

from import_graph import imported_modules

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "mobilegeo_ros"

#: Modules known to be reached only from tests/benchmarks, each with what keeps it in the package. Keep it empty:
#: the test fails when a module is added here without being unreachable, and when one becomes unreachable.
ONLY_FROM_TESTS_FOR_NOW: dict[str, str] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in PKG.rglob("*.py")}


def imported_names(source: str, module: str, is_package: bool) -> set[str]:
    """Absolute names the module ``module`` imports anywhere in its body (:func:`import_graph.imported_modules`)."""
    return imported_modules(source, module if is_package else module.rpartition(".")[0])


def entry_modules() -> set[str]:
    setup = (ROOT / "setup.py").read_text()
    scripts = set(re.findall(r'=\s*(mobilegeo_ros[\w.]*):\w+', setup))
    assert {"mobilegeo_ros.cli", "mobilegeo_ros.ros.node"} <= scripts, scripts
    launch_imports = set()
    for launch in (ROOT / "launch").glob("*.py"):
        launch_imports |= imported_names(launch.read_text(), "launch." + launch.stem, False)
    main_block = re.compile(r'^if __name__ == "__main__":', re.M)
    runnable = {m for m, p in package_modules().items() if main_block.search(p.read_text())}
    tools = set()
    for script in (ROOT / "tools").glob("*.sh"):
        tools |= set(re.findall(r"(?:from|-m)\s+(mobilegeo_ros[\w.]*)", script.read_text()))
    return (scripts | runnable | tools | {"mobilegeo_ros.ros.replay"}
            | {n for n in launch_imports if n.startswith("mobilegeo_ros")})


def reachable_modules() -> set[str]:
    modules = package_modules()
    seen: set[str] = set()
    todo = [m for m in entry_modules() if m in modules]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        parts = m.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in modules]  # packages
        path = modules[m]
        todo += [n for n in imported_names(path.read_text(), m, path.name == "__init__.py") if n in modules]
    return seen


def test_every_package_module_is_reached_from_an_entry_point():
    unreachable = set(package_modules()) - reachable_modules()
    assert unreachable == set(ONLY_FROM_TESTS_FOR_NOW), (
        f"modules only tests/benchmarks import (move them to test/ or benchmarks/): "
        f"{sorted(unreachable - set(ONLY_FROM_TESTS_FOR_NOW))}; listed but reachable now (drop them from the "
        f"list): {sorted(set(ONLY_FROM_TESTS_FOR_NOW) - unreachable)}")


def test_the_walk_follows_lazy_and_relative_imports():
    src = "def f():\n    from ..index import facts\n    import mobilegeo_ros.geo.tiles\n"
    names = imported_names(src, "mobilegeo_ros.model.x", False)
    assert {"mobilegeo_ros.index.facts", "mobilegeo_ros.geo.tiles"} <= names
    assert "mobilegeo_ros.cli" in reachable_modules() and "mobilegeo_ros.index.facts" in reachable_modules()
