"""``ExportStudent``: write the trained student for deployment, without the teacher."""

from __future__ import annotations

import copy
import importlib.util
import logging
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor, nn

from lightning_kd.batch import split_batch
from lightning_kd.checkpoint import load_student
from lightning_kd.files import atomic_write, save_json, save_torch

__all__ = ["EXPORT_FILES", "ExportStudent"]

log = logging.getLogger(__name__)

EXPORT_FILES = {
    "state_dict": "student.pt",
    "torchscript": "student.ts",
    "onnx": "student.onnx",
    "info": "export.json",
}


class ExportStudent(L.Callback):
    """At the end of fit, write the best student of a ``DistillationModule`` for inference.

    Into ``dirpath`` (by default ``<trainer.default_root_dir>/export``) it writes:

    * ``student.pt``: the student's ``state_dict``;
    * ``student.ts``: a TorchScript module (traced with one training input; batch size is free);
    * ``student.onnx``: an ONNX graph with a dynamic batch dimension, when ``onnx`` and
      ``onnxscript`` are installed (``pip install lightning-kd[onnx]``);
    * ``export.json``: the class count, the input shape, the files, and the metrics.

    "Best" is the checkpoint that the trainer's ``ModelCheckpoint`` chose, when there is one;
    otherwise the weights at the end of fit. The exports hold the student alone, with no
    teacher and no temperature: they return logits at ``T = 1``, so
    ``softmax(logits)`` equals ``DistillationModule.predict_step(...)["probs"]``. To load::

        probs = torch.jit.load("export/student.ts")(x).softmax(-1)

    Files are written atomically. If ``dirpath`` already holds an export, the new one goes to
    ``dirpath-v1`` (``-v2``, ...) and nothing is overwritten. Only the global-zero process writes.

    Args:
        dirpath: Folder of the export; ``<trainer.default_root_dir>/export`` when ``None``.
        torchscript: Write ``student.ts``.
        onnx: Write ``student.onnx`` (``None``: when ``onnx`` is installed; ``True``: required).

    Example:
        >>> from lightning_kd.callbacks import ExportStudent
        >>> ExportStudent(dirpath="outputs/export").dirpath
        PosixPath('outputs/export')
    """

    def __init__(
        self, dirpath: Optional[Union[str, Path]] = None, torchscript: bool = True, onnx: Optional[bool] = None
    ):
        onnx_available = all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxscript"))
        if onnx and not onnx_available:
            raise ModuleNotFoundError(
                "ExportStudent(onnx=True) needs the packages onnx and onnxscript: pip install 'lightning-kd[onnx]'"
            )
        self.dirpath = None if dirpath is None else Path(dirpath)
        self.torchscript = torchscript
        self.onnx = onnx_available if onnx is None else onnx
        self.example_input: Optional[Tensor] = None
        self.export_dir: Optional[Path] = None  # where the last export went

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.example_input is None:
            x = split_batch(batch).x
            if isinstance(x, Tensor):
                self.example_input = x[:1].detach().cpu().clone()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not hasattr(pl_module, "student"):
            raise TypeError(
                f"ExportStudent needs a module with a `student` (a DistillationModule), got {type(pl_module).__name__}"
            )
        self._export(trainer, pl_module)

    @rank_zero_only
    def _export(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.example_input is None:
            raise RuntimeError("ExportStudent saw no tensor input during training, so it cannot trace the student")
        student = copy.deepcopy(pl_module.student).cpu().eval()
        checkpoint = trainer.checkpoint_callback
        best = checkpoint.best_model_path if isinstance(checkpoint, ModelCheckpoint) else ""
        source = "final weights"
        if best and Path(best).is_file():
            load_student(student, best)
            source = best
        directory = self._free_directory(self.dirpath or Path(trainer.default_root_dir) / "export")
        example = self.example_input.to(next(student.parameters(), torch.empty(0)).dtype)
        with torch.no_grad():
            num_classes = int(student(example).shape[-1])
        files = {"state_dict": save_torch(directory / EXPORT_FILES["state_dict"], student.state_dict()).name}
        if self.torchscript:
            files["torchscript"] = self._save_torchscript(student, example, directory / EXPORT_FILES["torchscript"])
        if self.onnx:
            files["onnx"] = self._save_onnx(student, example, directory / EXPORT_FILES["onnx"])
        info = {
            "student_class": f"{type(student).__module__}.{type(student).__qualname__}",
            "num_classes": num_classes,
            "input_shape": list(example.shape[1:]),
            "input_dtype": str(example.dtype).removeprefix("torch."),
            "output": "logits at T = 1; softmax(-1) gives the probabilities",
            "weights_from": source,
            "best": {
                "monitor": getattr(checkpoint, "monitor", None),
                "score": _to_float(getattr(checkpoint, "best_model_score", None)),
            },
            "metrics": {name: _to_float(value) for name, value in sorted(trainer.callback_metrics.items())},
            "files": files,
            "load": f"torch.jit.load('{EXPORT_FILES['torchscript']}')(x).softmax(-1)",
            "torch_version": torch.__version__,
        }
        save_json(directory / EXPORT_FILES["info"], info)
        self.export_dir = directory
        log.info("student exported to %s (%s)", directory, ", ".join(files.values()))

    @staticmethod
    def _free_directory(directory: Path) -> Path:
        """``directory``, or ``directory-vN`` when it already holds an export: never overwrite one."""
        candidate, version = directory, 0
        while (candidate / EXPORT_FILES["info"]).exists():
            version += 1
            candidate = directory.with_name(f"{directory.name}-v{version}")
        if candidate != directory:
            log.warning("%s already holds an export; writing this one to %s", directory, candidate)
        candidate.mkdir(parents=True, exist_ok=True)
        return candidate

    @staticmethod
    def _save_torchscript(student: nn.Module, example: Tensor, path: Path) -> str:
        with warnings.catch_warnings():  # TorchScript is deprecated in torch >= 2.9, still the portable format
            warnings.simplefilter("ignore", DeprecationWarning)
            traced = torch.jit.trace(student, example)
            atomic_write(path, lambda tmp: torch.jit.save(traced, str(tmp)))
        return path.name

    @staticmethod
    def _save_onnx(student: nn.Module, example: Tensor, path: Path) -> str:
        quiet = logging.getLogger("torch.onnx")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # the exporter logs a line per missing torchvision op
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                batch = torch.export.Dim("batch")
                program = torch.onnx.export(
                    student, (example,), dynamo=True, dynamic_shapes=({0: batch},), verbose=False
                )
            atomic_write(path, lambda tmp: program.save(str(tmp)))
        finally:
            quiet.setLevel(level)
        return path.name


def _to_float(value: Any) -> Optional[float]:
    if value is None:
        return None
    return float(value.item() if isinstance(value, Tensor) else value)
