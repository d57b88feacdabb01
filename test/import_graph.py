"""What a Python source file imports, read with ``ast`` (shared by the import-direction and reachability tests)."""

from __future__ import annotations

import ast


def imported_modules(source: str, package: str) -> set[str]:
    """Every absolute module name ``source`` imports, at any level (module, function, class); ``package`` is the
    package the module belongs to (for an ``__init__.py``, the package itself), against which relative imports are
    resolved. ``from a import b`` yields both ``a`` and ``a.b`` (b may be a submodule)."""
    parts = package.split(".") if package else []
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names |= {f"{base}.{a.name}" for a in node.names}
    return names
