"""AtomicCheckpointIO: an interrupted save leaves the previous checkpoint intact."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lightning_kd.checkpoint_io import AtomicCheckpointIO


def killed_mid_write(checkpoint, path):
    """Lightning's writer, killed halfway: a truncated file at whatever path it was given."""
    with open(path, "wb") as handle:
        handle.write(b"PK\x03\x04 truncated")
    raise KeyboardInterrupt("killed while saving")


@pytest.mark.parametrize(("io_class", "survives"), [(AtomicCheckpointIO, True), (TorchCheckpointIO, False)])
def test_a_kill_while_saving_leaves_the_previous_checkpoint(tmp_path, io_class, survives):
    io = io_class()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "epoch": 1}, path)
    with mock.patch("lightning.fabric.plugins.io.torch_io._atomic_save", killed_mid_write):
        with pytest.raises(KeyboardInterrupt):
            io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "epoch": 2}, path)
    if survives:
        assert io.load_checkpoint(path)["epoch"] == 1
        assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind
    else:  # Lightning's plain writer: the reason this plugin exists
        with pytest.raises(RuntimeError):
            io.load_checkpoint(path)


def test_save_then_load_round_trip(tmp_path):
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.arange(4.0)}}, tmp_path / "sub" / "a.ckpt")
    assert torch.equal(io.load_checkpoint(tmp_path / "sub" / "a.ckpt")["state_dict"]["w"], torch.arange(4.0))
