"""The pure core never imports rclpy (directly or through another module); only mobilegeo_ros/ros/ may."""

import ast
import subprocess
import sys
from pathlib import Path

from import_graph import imported_modules

PKG = Path(__file__).resolve().parents[1] / "mobilegeo_ros"
ROS_ONLY = {"rclpy", "sensor_msgs", "geometry_msgs", "nav_msgs", "diagnostic_msgs", "std_msgs", "builtin_interfaces",
            "rosidl_runtime_py", "launch", "launch_ros"}


def _imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_core_files_do_not_import_ros():
    core_files = [p for p in PKG.rglob("*.py") if "ros" not in p.relative_to(PKG).parts[:1]]
    assert len(core_files) > 5
    offenders = {str(p.relative_to(PKG)): sorted(_imported_roots(p) & ROS_ONLY) for p in core_files}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_core_modules_import_without_loading_rclpy():
    modules = sorted(
        "mobilegeo_ros." + ".".join(p.relative_to(PKG).with_suffix("").parts).replace(".__init__", "")
        for p in PKG.rglob("*.py")
        if p.relative_to(PKG).parts[0] != "ros"
    )
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m.rstrip('.'))\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(ROS_ONLY)!r})\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PKG.parent)
    assert r.returncode == 0, r.stdout + r.stderr


def _package_of(path: Path) -> str:
    return ".".join(["mobilegeo_ros", *path.relative_to(PKG).parent.parts])


ABOVE_MODEL = ("mobilegeo_ros.index", "mobilegeo_ros.localizer", "mobilegeo_ros.tracker", "mobilegeo_ros.ros")


def test_model_does_not_import_the_layers_above_it():
    """model/ embeds images; the index, the localizer, the tracker and the ROS node are built on it, never the
    other way round (an import circle once ran model/tensorrt_backend -> index.build -> model)."""
    files = sorted((PKG / "model").rglob("*.py"))
    assert len(files) > 5
    offenders = {
        str(p.relative_to(PKG)): sorted(m for m in imported_modules(p.read_text(), _package_of(p))
                                        if any(m == up or m.startswith(up + ".") for up in ABOVE_MODEL))
        for p in files
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_import_scanner_sees_function_level_and_relative_imports():
    source = "def f():\n    from mobilegeo_ros.localizer import center_square\n    from ..index import build\n"
    names = imported_modules(source, "mobilegeo_ros.model")
    assert "mobilegeo_ros.localizer" in names and "mobilegeo_ros.index.build" in names
