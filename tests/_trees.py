"""Test-only helper: a folder's whole content, to assert that a refused command left it byte for byte."""
import hashlib
from pathlib import Path


def tree(folder: Path) -> dict:
    """Every file and folder under `folder` (hidden ones included): its bytes' digest, or "folder"."""
    return {str(path.relative_to(folder)): "folder" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(Path(folder).rglob("*"))}
