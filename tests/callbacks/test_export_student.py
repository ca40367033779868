"""ExportStudent: the best student, without the teacher, loadable in one line, matching predict_step."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from kd_testing import BatchNormDropoutNet, quiet_trainer
from lightning_kd import DistillationLoss, DistillationModule, load_student
from lightning_kd.callbacks import ExportStudent
from lightning_kd.models import MLP


def make_module() -> DistillationModule:
    torch.manual_seed(0)
    student = torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Linear(16, 3)
    )
    return DistillationModule(student, BatchNormDropoutNet(width=32), loss=DistillationLoss(temperature=4.0, alpha=0.5))


def fit_and_export(toy_loaders, tmp_path, *callbacks, **trainer_kwargs):
    train, val = toy_loaders
    module, export = make_module(), ExportStudent(dirpath=tmp_path / "export")
    trainer = quiet_trainer(max_epochs=4, callbacks=[*callbacks, export], **trainer_kwargs)
    trainer.fit(module, train, val)
    return module, export, trainer


def test_exports_the_best_student_matching_predict_step(toy_loaders, tmp_path):
    train, val = toy_loaders
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/loss", mode="min")
    module, export, trainer = fit_and_export(toy_loaders, tmp_path, checkpoints, enable_checkpointing=True)
    directory = tmp_path / "export"
    info = json.loads((directory / "export.json").read_text())
    assert info["num_classes"] == 3 and info["input_shape"] == [8]
    assert info["weights_from"] == checkpoints.best_model_path
    assert info["best"]["score"] == pytest.approx(float(checkpoints.best_model_score))
    assert set(info["files"]) == {"state_dict", "torchscript", "onnx"}
    assert "val/acc" in info["metrics"] and "teacher" not in json.dumps(info["files"])

    # The reference: predict_step of the module with the best checkpoint's weights.
    predicted = trainer.predict(module, val, ckpt_path=checkpoints.best_model_path)
    probs = torch.cat([p["probs"] for p in predicted])
    x = val.dataset.tensors[0]

    scripted = torch.jit.load(directory / "student.ts")  # the documented one-liner
    torch.testing.assert_close(scripted(x).softmax(-1), probs, atol=1e-5, rtol=0)
    assert not any("teacher" in name for name, _ in scripted.named_modules())
    assert "temperature" not in scripted.code

    state = torch.load(directory / "student.pt", weights_only=True)
    assert not any(key.startswith("teacher") for key in state)
    rebuilt = make_module().student
    rebuilt.load_state_dict(state)
    torch.testing.assert_close(rebuilt.eval()(x).softmax(-1), probs, atol=1e-5, rtol=0)

    session = onnxruntime.InferenceSession(str(directory / "student.onnx"))
    (logits,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})  # a batch size other than the trace's
    np.testing.assert_allclose(torch.from_numpy(logits).softmax(-1).numpy(), probs.numpy(), atol=1e-5, rtol=0)

    best = load_student(make_module().student, checkpoints.best_model_path)
    torch.testing.assert_close(best(x), scripted(x), atol=1e-5, rtol=0)


def test_without_a_checkpoint_callback_the_final_weights_are_exported(toy_loaders, tmp_path):
    module, export, _ = fit_and_export(toy_loaders, tmp_path)
    info = json.loads((export.export_dir / "export.json").read_text())
    assert info["weights_from"] == "final weights"
    x = toy_loaders[1].dataset.tensors[0]
    torch.testing.assert_close(torch.jit.load(export.export_dir / "student.ts")(x), module.student.eval()(x))


def test_an_existing_export_is_never_overwritten(toy_loaders, tmp_path):
    _, first, _ = fit_and_export(toy_loaders, tmp_path)
    before = (tmp_path / "export" / "student.pt").read_bytes()
    _, second, _ = fit_and_export(toy_loaders, tmp_path, max_steps=2)
    assert first.export_dir == tmp_path / "export" and second.export_dir == tmp_path / "export-v1"
    assert (tmp_path / "export" / "student.pt").read_bytes() == before
    assert (tmp_path / "export-v1" / "export.json").is_file()


def test_onnx_and_torchscript_can_be_turned_off(toy_loaders, tmp_path):
    train, val = toy_loaders
    export = ExportStudent(tmp_path / "export", torchscript=False, onnx=False)
    quiet_trainer(max_epochs=1, callbacks=[export]).fit(make_module(), train, val)
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["export.json", "student.pt"]


def test_a_module_without_a_student_is_refused(toy_loaders, tmp_path):
    from lightning_kd import ClassifierModule

    train, val = toy_loaders
    trainer = quiet_trainer(max_epochs=1, callbacks=[ExportStudent(tmp_path)])
    with pytest.raises(TypeError, match="needs a module with a `student`.*got ClassifierModule"):
        trainer.fit(ClassifierModule(MLP(8, 3)), train, val)
