"""Process-group housekeeping for the programs that use lightning-kd.

Lightning destroys an NCCL process group at exit but leaves a gloo one (CPU) to the
interpreter's shutdown, where torch can abort the process ("terminate called without an
active exception", SIGABRT) after a run that succeeded.
"""

from __future__ import annotations

import atexit

import torch.distributed as dist

__all__ = ["destroy_process_group", "destroy_process_group_at_exit"]

_registered = False


def destroy_process_group() -> None:
    """Destroy the default process group if there is one; otherwise do nothing."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def destroy_process_group_at_exit() -> None:
    """Destroy the default process group when the program exits, before the interpreter shuts down.

    Called by the modules' ``setup`` on every rank. The group stays alive until then, so a
    ``trainer.test`` after ``trainer.fit`` in the same program still works. Registered once.

    Example:
        >>> destroy_process_group_at_exit()  # no group: nothing is registered
    """
    global _registered
    if _registered or not (dist.is_available() and dist.is_initialized()):
        return
    atexit.register(destroy_process_group)
    _registered = True
