"""A source file as it was at a git commit, imported beside this tree's own: the benches that compare a change
with the code before it, side by side in one run."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_at(commit: str, path: str, name: str):
    """``path`` (from the repository's root) as it was at ``commit``, imported as module ``name``; what it
    imports in turn comes from this tree."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:{path}"], check=True, capture_output=True, text=True).stdout
    with tempfile.NamedTemporaryFile("w", suffix=".py") as f:
        f.write(source)
        f.flush()
        spec = importlib.util.spec_from_file_location(name, f.name)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return module
