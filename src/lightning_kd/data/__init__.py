"""LightningDataModules for the bundled and offline datasets."""

from lightning_kd.data.augment import RandomCropFlip
from lightning_kd.data.base import TensorDataModule
from lightning_kd.data.bbc_news import BBCNewsDataModule
from lightning_kd.data.digits import DigitsDataModule
from lightning_kd.data.fashion_mnist import FashionMNISTDataModule
from lightning_kd.data.indexed import IndexedDataset
from lightning_kd.data.shakespeare import ShakespeareDataModule
from lightning_kd.data.token_blocks import TokenBlocks

__all__ = [
    "BBCNewsDataModule",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "IndexedDataset",
    "RandomCropFlip",
    "ShakespeareDataModule",
    "TensorDataModule",
    "TokenBlocks",
]
