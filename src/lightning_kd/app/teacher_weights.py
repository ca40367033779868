"""Loading a teacher's weights from a checkpoint, with errors that say what does not match."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import torch
from torch import nn

__all__ = ["TeacherCheckpointError", "load_teacher_weights"]

# Lightning checkpoints keep a network under the attribute that holds it in the module:
# "model." (ClassifierModule, stage=teacher), "student." (a distilled student as the next teacher).
_PREFIXES = ("model.", "student.", "teacher.")


class TeacherCheckpointError(ValueError):
    """A teacher checkpoint is missing, unreadable, or does not fit the teacher network."""


def _extract(state: dict, expected: set) -> dict:
    if set(state) == expected:
        return state
    for prefix in _PREFIXES:
        stripped = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if stripped and set(stripped) == expected:
            return stripped
    # No exact match: return the best candidate so the error lists its differences.
    candidates = [state] + [{k[len(p) :]: v for k, v in state.items() if k.startswith(p)} for p in _PREFIXES]
    return max(candidates, key=lambda c: len(set(c) & expected))


def load_teacher_weights(teacher: nn.Module, path: Union[str, os.PathLike]) -> nn.Module:
    """Load ``path`` (a Lightning checkpoint or a plain state_dict) into ``teacher``.

    Raises:
        TeacherCheckpointError: naming the path and the missing, unexpected or mis-shaped keys.
    """
    path = Path(path)
    if not path.is_file():
        raise TeacherCheckpointError(f"teacher checkpoint not found: {path}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a corrupt or foreign file
        raise TeacherCheckpointError(f"cannot read teacher checkpoint {path}: {error}") from error
    state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else None
    if not isinstance(state, dict):
        raise TeacherCheckpointError(f"teacher checkpoint {path} holds a {type(loaded).__name__}, not a state_dict")
    own = teacher.state_dict()
    state = _extract(state, set(own))
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs network {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        details = []
        if missing:
            details.append(f"missing keys {_short(missing)}")
        if unexpected:
            details.append(f"unexpected keys {_short(unexpected)}")
        if shapes:
            details.append(f"mismatched shapes {_short(shapes)}")
        raise TeacherCheckpointError(
            f"teacher checkpoint {path} does not fit the configured teacher ({type(teacher).__name__}): "
            + "; ".join(details)
        )
    teacher.load_state_dict(state)
    return teacher


def _short(items: list, limit: int = 4) -> str:
    shown = ", ".join(items[:limit])
    return f"[{shown}{f', ... {len(items) - limit} more' if len(items) > limit else ''}]"
