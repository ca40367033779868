"""RandomCropFlip, and the data module applying it to training batches only."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from lightning_kd.classifier import ClassifierModule
from lightning_kd.data import RandomCropFlip, TensorDataModule
from lightning_kd.models import MLP


def reference_crop_flip(image: torch.Tensor, pad: int, dy: int, dx: int, flip: bool) -> torch.Tensor:
    """One image ``[C, H, W]``: pad with zeros, crop at offset (dy, dx), then flip left-right."""
    height, width = image.shape[-2:]
    out = F.pad(image, (pad, pad, pad, pad))[:, dy : dy + height, dx : dx + width]
    return out.flip(-1) if flip else out


def test_each_image_is_a_shifted_zero_padded_crop_possibly_flipped():
    torch.manual_seed(0)
    images = torch.rand(64, 2, 5, 7) + 1  # no zeros in the images: padding shows up as zeros
    out = RandomCropFlip(padding=2)(images)
    assert out.shape == images.shape
    seen_shifts, seen_flips = set(), set()
    for image, result in zip(images, out, strict=True):
        matches = [
            (dy, dx, flip)
            for dy in range(5)
            for dx in range(5)
            for flip in (False, True)
            if torch.equal(reference_crop_flip(image, 2, dy, dx, flip), result)
        ]
        assert len(matches) == 1, "every output is exactly one crop and flip of its own input"
        seen_shifts.add(matches[0][:2])
        seen_flips.add(matches[0][2])
    assert len(seen_shifts) > 10 and seen_flips == {False, True}


def test_the_generator_seed_makes_it_repeatable_and_no_op_settings_change_nothing():
    images = torch.rand(8, 1, 6, 6)
    torch.manual_seed(3)
    first = RandomCropFlip(padding=1)(images)
    torch.manual_seed(3)
    assert torch.equal(RandomCropFlip(padding=1)(images), first)
    assert torch.equal(RandomCropFlip(padding=0, flip=False)(images), images)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"padding": -1}, "padding must be a non-negative integer"), ({"flip": "yes"}, "flip must be true or false")],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RandomCropFlip(**kwargs)


def test_a_batch_without_image_dimensions_is_refused():
    with pytest.raises(ValueError, match=r"expects images \[B, C, H, W\], got shape \(4, 10\)"):
        RandomCropFlip()(torch.zeros(4, 10))


class Squares(TensorDataModule):
    """Distinct images, so that a changed batch is visible."""

    num_classes = 2
    input_shape = (1, 4, 4)

    def load(self):
        x = torch.arange(1.0, 1 + 16 * 16).view(16, 1, 4, 4)
        y = torch.arange(16) % 2
        return x, y, x, y, x, y


class RecordingClassifier(ClassifierModule):
    """Records the inputs of every training and validation batch."""

    def __init__(self):
        super().__init__(MLP(16, 2, hidden=[4]), num_classes=2)
        self.seen = {"train": [], "val": []}

    def training_step(self, batch, batch_idx):
        self.seen["train"].append(batch[0].clone())
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        self.seen["val"].append(batch[0].clone())
        return super().validation_step(batch, batch_idx)


def test_the_data_module_augments_training_batches_only():
    data = Squares(batch_size=16, augment=RandomCropFlip(padding=1))
    module = RecordingClassifier()
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(module, datamodule=data)
    original = data.train_set.tensors[0]
    (train_batch,) = module.seen["train"]
    assert not torch.equal(train_batch.sort(0).values, original.sort(0).values)  # augmented
    assert train_batch.abs().sum() > 0
    assert all(torch.equal(batch, original[: len(batch)]) for batch in module.seen["val"])  # as stored


def test_augment_must_be_callable():
    with pytest.raises(TypeError, match="augment must be a callable"):
        Squares(augment="crop")
