"""Running the real workflow in a throw-away copy of the project: Snakemake and DVC as subprocesses."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
REDUCED = yaml.safe_load((ROOT / "tests" / "workflow" / "reduced_config.yaml").read_text())
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1"}


def make_project(directory: Path, config: dict) -> Path:
    """A copy of the workflow (and the sources DVC hashes) with its own config.yaml; the overlays of config/
    come along (dvc.yaml's base-to-new stage merges config/demo_base_to_new.yaml over it)."""
    directory.mkdir(parents=True)
    for name in ("Snakefile", "dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, directory / name)
    shutil.copytree(ROOT / "workflow", directory / "workflow")
    shutil.copytree(ROOT / "profiles", directory / "profiles")
    shutil.copytree(ROOT / "config", directory / "config")
    shutil.copytree(
        ROOT / "src" / "complora", directory / "src" / "complora", ignore=shutil.ignore_patterns("__pycache__")
    )
    (directory / "config.yaml").write_text(yaml.safe_dump(config))
    return directory


def run(
    project: Path, *command: str, env: dict[str, str] | None = None, timeout: float = 900
) -> subprocess.CompletedProcess:
    """``command`` in ``project``, with this environment's tools first on PATH (plus ``env``)."""
    return subprocess.run(
        command, cwd=project, env={**ENV, **(env or {})}, capture_output=True, text=True, timeout=timeout
    )
