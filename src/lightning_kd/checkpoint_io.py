"""``AtomicCheckpointIO``: checkpoints written to a temporary file, then renamed into place."""

from __future__ import annotations

from typing import Any, Optional

from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lightning_kd.files import atomic_write

__all__ = ["AtomicCheckpointIO"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Save checkpoints atomically: a run killed while saving leaves the previous file intact.

    Lightning writes ``last.ckpt`` in place; a kill in the middle leaves a truncated file that
    cannot be resumed from. This plugin writes beside it and renames, which is atomic on POSIX.

    Example:
        >>> import lightning as L
        >>> trainer = L.Trainer(plugins=[AtomicCheckpointIO()], logger=False)
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Optional[Any] = None) -> None:
        atomic_write(
            path, lambda tmp: super(AtomicCheckpointIO, self).save_checkpoint(checkpoint, tmp, storage_options)
        )
