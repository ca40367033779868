"""Callbacks for distillation runs: schedules of T and alpha, a monitor, the student's export, and the
teacher's stored outputs or sequences.

Example:
    >>> from lightning_kd.callbacks import DistillationMonitor, ExportStudent, TemperatureSchedule
    >>> callbacks = [TemperatureSchedule(start=8.0, end=2.0), DistillationMonitor(), ExportStudent()]
"""

from lightning_kd.callbacks.alpha_schedule import AlphaSchedule
from lightning_kd.callbacks.cache_teacher_outputs import CacheTeacherOutputs, TeacherOutputMismatchError
from lightning_kd.callbacks.distillation_monitor import DistillationMonitor
from lightning_kd.callbacks.export_student import ExportStudent
from lightning_kd.callbacks.progress_log import ProgressLog
from lightning_kd.callbacks.teacher_sequences import TeacherSequences
from lightning_kd.callbacks.temperature_schedule import TemperatureSchedule
from lightning_kd.callbacks.warmup_schedule import WarmupSchedule

__all__ = [
    "DISTILLATION_CALLBACKS",
    "AlphaSchedule",
    "CacheTeacherOutputs",
    "DistillationMonitor",
    "ExportStudent",
    "ProgressLog",
    "TeacherOutputMismatchError",
    "TeacherSequences",
    "TemperatureSchedule",
    "WarmupSchedule",
]

# The callbacks that need a DistillationModule (its loss, teacher outputs or student).
DISTILLATION_CALLBACKS = (
    AlphaSchedule,
    CacheTeacherOutputs,
    DistillationMonitor,
    ExportStudent,
    TeacherSequences,
    TemperatureSchedule,
    WarmupSchedule,
)
