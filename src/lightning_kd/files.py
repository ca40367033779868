"""Atomic writes: a reader never sees a half-written file, and a kill leaves the old one intact."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Union

__all__ = ["atomic_write", "save_json", "save_torch"]


def atomic_write(path: Union[str, os.PathLike], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_json(path: Union[str, os.PathLike], data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n"))


def save_torch(path: Union[str, os.PathLike], obj: Any) -> Path:
    """``torch.save`` atomically."""
    import torch  # here: kd-report writes JSON without importing torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))
