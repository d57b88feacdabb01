"""ament_python package that also installs with plain pip (see README.md)."""

import sys
import xml.etree.ElementTree as ET
from glob import glob
from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = "mobilegeo_ros"
HERE = Path(__file__).resolve().parent
# Single source of truth for the version: package.xml.
VERSION = ET.parse(HERE / "package.xml").getroot().findtext("version")

data_files = [
    ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
    (f"share/{PACKAGE}", ["package.xml"]),
    (f"share/{PACKAGE}/launch", sorted(glob("launch/*.py"))),
    (f"share/{PACKAGE}/config", sorted(glob("config/*.yaml"))),
    (f"share/{PACKAGE}/models", sorted(p for p in glob("models/*") if Path(p).is_file())),
]
# pip builds a wheel and ignores setup.cfg's install_scripts, so launch_ros would not find the node in
# lib/<package>/. Install small wrappers there for the pip layout only; colcon (setup.py install/develop)
# puts the console scripts in lib/<package>/ itself and must not get a second copy.
if "bdist_wheel" in sys.argv:
    data_files.append((f"lib/{PACKAGE}", sorted(glob("scripts/*"))))

setup(
    name=PACKAGE,
    version=VERSION,
    packages=find_packages(exclude=["test", "test.*", "benchmarks"]),
    data_files=data_files,
    python_requires=">=3.10",
    install_requires=[
        "numpy>=1.26",
        "PyYAML>=6",
        "tqdm>=4.66",
        "rasterio>=1.4",
        "pyproj>=3.6",
        "opencv-python-headless>=4.9",
        "faiss-cpu>=1.8",
        "matplotlib>=3.8",
        "Pillow>=10",
        "safetensors>=0.4",
        "torch>=2.4",
        "torchvision>=0.19",
    ],
    extras_require={
        "test": ["pytest>=8,<8.4", "hypothesis>=6.100"],
        "onnx": ["onnx>=1.16", "onnxruntime>=1.18"],
        "train": ["onnx>=1.16", "onnxruntime>=1.18"],
        "bags": ["rosbags>=0.10"],
        "flightstack": ["pymavlink>=2.4", "pynmea2>=1.19"],
    },
    zip_safe=False,
    maintainer="mobilegeo_ros maintainers",
    description="Camera-only GNSS substitute for drones by cross-view geo-localization (ROS 2).",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "mobilegeo = mobilegeo_ros.cli:main",
            "localize_node = mobilegeo_ros.ros.node:main",
        ],
    },
)
