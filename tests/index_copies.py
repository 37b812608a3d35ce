"""Tests that damage an index do it on a copy: this makes one from a built index."""

import shutil
from pathlib import Path


def copy_of(built, tmp_path: Path) -> Path:
    """An index directory under tmp_path holding a copy of `built`, with CURRENT pointing at it."""
    root = tmp_path / "index"
    root.mkdir()
    shutil.copytree(built.root, root / built.root.name)
    (root / "CURRENT").write_text(built.root.name + "\n")
    return root
