"""``ExportStudent``: write the trained student for deployment, without the teacher."""

from __future__ import annotations

import copy
import importlib.util
import logging
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Optional, Union

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor, nn

from lightning_kd.batch import split_batch
from lightning_kd.checkpoint import student_state_dict
from lightning_kd.distillable import require_distillable
from lightning_kd.files import atomic_write, save_json, save_torch

__all__ = ["EXPORT_FILES", "ExportStudent", "materialize_student"]

log = logging.getLogger(__name__)

EXPORT_FILES = {
    "state_dict": "student.pt",
    "torchscript": "student.ts",
    "torch_export": "student.pt2",
    "onnx": "student.onnx",
    "info": "export.json",
}


class ExportStudent(L.Callback):
    """At the end of fit, write the best student of a ``DistillationModule`` for inference.

    Into ``dirpath`` (by default ``<trainer.default_root_dir>/export``) it writes:

    * ``student.pt``: the student's ``state_dict``;
    * ``student.ts``: a TorchScript module (traced with one training input; batch size is free);
    * ``student.pt2``: a ``torch.export`` program with a dynamic batch dimension, TorchScript's
      successor (TorchScript is deprecated, but still loads everywhere);
    * ``student.onnx``: an ONNX graph with a dynamic batch dimension, when ``onnx`` and
      ``onnxscript`` are installed (``pip install lightning-kd[onnx]``);
    * ``export.json``: the class count, the input shape, the files, and the metrics.

    "Best" is the checkpoint that the trainer's ``ModelCheckpoint`` chose, when there is one;
    otherwise the weights at the end of fit, gathered whole under FSDP. The exports hold the
    student alone, with no teacher and no temperature: they return logits at ``T = 1``, so
    ``softmax(logits)`` equals ``DistillationModule.predict_step(...)["probs"]``. To load::

        probs = torch.export.load("export/student.pt2").module()(x).softmax(-1)

    Files are written atomically. If ``dirpath`` already holds an export, the new one goes to
    ``dirpath-v1`` (``-v2``, ...) and nothing is overwritten. Only the global-zero process writes.

    Args:
        dirpath: Folder of the export; ``<trainer.default_root_dir>/export`` when ``None``.
        torchscript: Write ``student.ts``.
        onnx: Write ``student.onnx`` (``None``: when ``onnx`` is installed; ``True``: required).
        torch_export: Write ``student.pt2``.

    Example:
        >>> from lightning_kd.callbacks import ExportStudent
        >>> ExportStudent(dirpath="outputs/export").dirpath
        PosixPath('outputs/export')
    """

    def __init__(
        self,
        dirpath: Optional[Union[str, Path]] = None,
        torchscript: bool = True,
        onnx: Optional[bool] = None,
        torch_export: bool = True,
    ):
        onnx_available = all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxscript"))
        if onnx and not onnx_available:
            raise ModuleNotFoundError(
                "ExportStudent(onnx=True) needs the packages onnx and onnxscript: pip install 'lightning-kd[onnx]'"
            )
        self.dirpath = None if dirpath is None else Path(dirpath)
        self.torchscript = torchscript
        self.onnx = onnx_available if onnx is None else onnx
        self.torch_export = torch_export
        self.example_input: Optional[Tensor] = None
        self.keyword_inputs = False  # the networks take keyword inputs (tokenized text): weights only
        self.export_dir: Optional[Path] = None  # where the last export went

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.example_input is None and not self.keyword_inputs:
            x = split_batch(batch).x  # a tokenized batch gives its keyword inputs
            if isinstance(x, Tensor):
                self.example_input = x[:1].detach().cpu().clone()
            elif isinstance(x, Mapping):
                self.keyword_inputs = True

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            require_distillable(type(self).__name__, pl_module)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.example_input is None and not self.keyword_inputs:
            raise RuntimeError("ExportStudent saw no tensor input during training, so it cannot trace the student")
        checkpoint = trainer.checkpoint_callback
        best = checkpoint.best_model_path if isinstance(checkpoint, ModelCheckpoint) else ""
        # Global zero reads the file, so it decides: a checkpoint folder may exist on its node only.
        from_file = trainer.strategy.broadcast(bool(best) and Path(best).is_file())
        # Not a copy of the live student: under FSDP its parameters are this rank's shards. Gathering the
        # full state is a collective there, so every rank calls it; elsewhere it is the plain state_dict.
        state = None if from_file else trainer.strategy.lightning_module_state_dict()
        self._export(trainer, pl_module, best if from_file else None, state)

    @rank_zero_only
    def _export(
        self, trainer: L.Trainer, pl_module: L.LightningModule, best: Optional[str], state: Optional[dict]
    ) -> None:
        checkpoint = trainer.checkpoint_callback
        if best is not None:
            weights = student_state_dict(torch.load(best, map_location="cpu", weights_only=True))
            source = best
        else:
            if getattr(checkpoint, "best_model_path", ""):
                log.warning(
                    "the best checkpoint %s is not a file; exporting the final weights", checkpoint.best_model_path
                )
            weights = student_state_dict({"state_dict": state})
            source = "final weights"
        student = materialize_student(pl_module.student, weights).cpu().eval()
        directory = self._free_directory(self.dirpath or Path(trainer.default_root_dir) / "export")
        files = {"state_dict": save_torch(directory / EXPORT_FILES["state_dict"], student.state_dict()).name}
        if self.example_input is None:  # keyword inputs: the traced formats would need them all as examples
            log.warning("the student takes keyword inputs (tokenized text): exporting its weights only")
            self._write_info(trainer, student, directory, files, source, None)
            return
        example = self.example_input.to(next(student.parameters(), torch.empty(0)).dtype)
        if self.torchscript:
            files["torchscript"] = self._save_torchscript(student, example, directory / EXPORT_FILES["torchscript"])
        if self.torch_export:
            files["torch_export"] = self._save_torch_export(student, example, directory / EXPORT_FILES["torch_export"])
        if self.onnx:
            files["onnx"] = self._save_onnx(student, example, directory / EXPORT_FILES["onnx"])
        self._write_info(trainer, student, directory, files, source, example)

    def _write_info(
        self,
        trainer: L.Trainer,
        student: nn.Module,
        directory: Path,
        files: dict[str, str],
        source: str,
        example: Optional[Tensor],
    ) -> None:
        checkpoint = trainer.checkpoint_callback
        num_classes = None
        if example is not None:
            with torch.no_grad():
                num_classes = int(student(example).shape[-1])
        info = {
            "student_class": f"{type(student).__module__}.{type(student).__qualname__}",
            "num_classes": num_classes,
            "input_shape": None if example is None else list(example.shape[1:]),
            "input_dtype": None if example is None else str(example.dtype).removeprefix("torch."),
            "output": "logits at T = 1; softmax(-1) gives the probabilities",
            "weights_from": source,
            "best": {
                "monitor": getattr(checkpoint, "monitor", None),
                "score": _to_float(getattr(checkpoint, "best_model_score", None)),
            },
            "metrics": {name: _to_float(value) for name, value in sorted(trainer.callback_metrics.items())},
            "files": files,
            "load": _load_hint(files),
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
    def _save_torch_export(student: nn.Module, example: Tensor, path: Path) -> str:
        # torch.export specialises a dimension of size 1 to a constant: trace a batch of 2 to keep it free.
        pair = torch.cat([example, example])
        program = torch.export.export(student, (pair,), dynamic_shapes=({0: torch.export.Dim("batch")},))

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as file:  # a file object: given a path not ending in .pt2, torch warns
                torch.export.save(program, file)

        atomic_write(path, write)
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


def materialize_student(structure: nn.Module, state: Mapping[str, Tensor]) -> nn.Module:
    """Return a copy of ``structure`` whose parameters and persistent buffers are the tensors of ``state``.

    Under FSDP (``use_orig_params=True``) the live student's parameters are views into this rank's
    shard, of any shape, size 0 included: a deep copy of it cannot ``load_state_dict`` the full
    weights. Here every parameter and buffer is replaced rather than copied into, and the values of
    ``structure`` are never copied. Tied parameters stay tied.

    Args:
        structure: The module to copy, or its ``torch.compile`` wrapper (unwrapped); it is not modified.
        state: Its full state, keys as in its ``state_dict`` (e.g. from ``student_state_dict``).

    Returns:
        The copy, on the devices of ``state``'s tensors, its parameters not requiring grad.

    Raises:
        ValueError: When the keys of ``state`` are not those of the parameters and persistent buffers.

    Example:
        >>> from lightning_kd.models import MLP
        >>> zeros = {key: torch.zeros_like(value) for key, value in MLP(4, 2).state_dict().items()}
        >>> materialize_student(MLP(4, 2), zeros)(torch.ones(1, 4))
        tensor([[0., 0.]])
    """
    structure = getattr(structure, "_orig_mod", structure)  # torch.compile's wrapper: the exports want the module
    current = {key: getattr(owner, name) for key, owner, name in _state_slots(structure)}
    missing, unexpected = sorted(set(current) - set(state)), sorted(set(state) - set(current))
    if missing or unexpected:
        raise ValueError(
            f"the state does not match the student's parameters and buffers: missing {missing}, unexpected {unexpected}"
        )
    # They are all replaced below: deep-copy them as empty placeholders, not as (sharded, device) copies.
    memo = {
        id(tensor): nn.Parameter(torch.empty(0, device="meta"), requires_grad=False)
        if isinstance(tensor, nn.Parameter)
        else torch.empty(0, device="meta")
        for tensor in current.values()
    }
    module = copy.deepcopy(structure, memo)
    replaced: dict[int, Tensor] = {}
    for key, owner, name in _state_slots(module):
        old = getattr(owner, name)
        if id(old) not in replaced:
            value = state[key].detach().clone()
            replaced[id(old)] = nn.Parameter(value, requires_grad=False) if isinstance(old, nn.Parameter) else value
        setattr(owner, name, replaced[id(old)])
    return module


def _state_slots(module: nn.Module) -> Iterator[tuple[str, nn.Module, str]]:
    """``(state_dict key, owning module, attribute)`` of each parameter and persistent buffer.

    Read from the modules, not from ``state_dict()``: that could run FSDP's hooks (collectives) on one rank.
    """
    for prefix, owner in module.named_modules(remove_duplicate=False):
        for name, tensor in [*owner._parameters.items(), *owner._buffers.items()]:
            if tensor is not None and name not in owner._non_persistent_buffers_set:
                yield (f"{prefix}.{name}" if prefix else name), owner, name


def _load_hint(files: dict[str, str]) -> str:
    """The one line that loads the export, in ``export.json``."""
    if "torch_export" in files:
        return f"torch.export.load('{files['torch_export']}').module()(x).softmax(-1)"
    if "torchscript" in files:
        return f"torch.jit.load('{files['torchscript']}')(x).softmax(-1)"
    return f"student.load_state_dict(torch.load('{files['state_dict']}', weights_only=True))"


def _to_float(value: Any) -> Optional[float]:
    if value is None:
        return None
    return float(value.item() if isinstance(value, Tensor) else value)
