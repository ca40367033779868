"""LightningDataModules for the bundled and offline datasets."""

from lightning_kd.data.base import TensorDataModule
from lightning_kd.data.digits import DigitsDataModule
from lightning_kd.data.fashion_mnist import FashionMNISTDataModule

__all__ = ["DigitsDataModule", "FashionMNISTDataModule", "TensorDataModule"]
