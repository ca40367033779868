"""LightningDataModules for the bundled and offline datasets."""

from lightning_kd.data.digits import DigitsDataModule

__all__ = ["DigitsDataModule"]
