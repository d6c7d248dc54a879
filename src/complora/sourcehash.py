"""Fingerprints of complora's own source code, per entry module.

A workflow job records the fingerprint of the code it runs (the module its verb calls and every complora
module that module imports, at any depth), so editing the training code reruns training jobs, while
editing the aggregation code reruns only the aggregation. Reads files only: no torch import.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

PACKAGE = "complora"
PACKAGE_ROOT = Path(__file__).resolve().parent
# Files the code reads as data: the architectures complora registers with open_clip.
DATA_FILES = {f"{PACKAGE}.models": sorted((PACKAGE_ROOT / "model_configs").glob("*.json"))}


def _source_file(module: str) -> Path | None:
    parts = module.split(".")[1:]
    candidates = [PACKAGE_ROOT.joinpath(*parts).with_suffix(".py"), PACKAGE_ROOT.joinpath(*parts, "__init__.py")]
    return next((path for path in candidates if path.is_file()), None)


def _imported_modules(module: str, path: Path) -> set[str]:
    """complora modules imported anywhere in ``path`` (function-level imports included)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from . import module`
    return {name for name in found if name.split(".")[0] == PACKAGE and _source_file(name)}


def source_files(*modules: str) -> list[Path]:
    """The source files of ``modules``, of every complora module they import, and of their packages."""
    seen: set[str] = set()
    pending = list(modules)
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        path = _source_file(module)
        if path is None:
            raise ValueError(f"{module} is not a module of the {PACKAGE} package")
        seen.add(module)
        parents = [".".join(module.split(".")[:depth]) for depth in range(1, module.count(".") + 1)]
        pending.extend([*parents, *_imported_modules(module, path)])
    files = {_source_file(module) for module in seen}
    files.update(data for module in seen for data in DATA_FILES.get(module, []))
    return sorted(files)


def source_fingerprint(*modules: str) -> str:
    """sha256 over the relative paths and bytes of :func:`source_files`."""
    digest = hashlib.sha256()
    for path in source_files(*modules):
        digest.update(str(path.relative_to(PACKAGE_ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()
