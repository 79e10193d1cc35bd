"""Named downstream tasks on real data: a loader, label columns, a split rule and a target kind.

Each :class:`Task` (:mod:`.registry`, with the split rules) turns a data root (the folder holding
``ptbxl/``, ``physionet/<db>/`` and ``meds_demo/``) into a :class:`TaskData`: waveforms ``[N, C, T]``
or tabular features ``[N, d]``, targets ``Y [N, L]``, one patient id per row and a patient-disjoint
``(train, test)`` split. One adapter module per dataset reads it (:mod:`.ptbxl`, :mod:`.physionet`
for MIT-BIH/SVDB beats and CPSC 2021 rhythms, :mod:`.eegmat`, :mod:`.mimic` with its feature
engineering, :mod:`.sim`). :func:`run_task` (:mod:`.run`) embeds waveforms with a run's encoder (or
a random-init ``resnet1d`` when no run is given), fits a probe per encoder, and audits the
embeddings; :func:`write_report` (:mod:`.report`) writes every task's tables and figures.
"""
from .mimic import ehr_features, mimic_admissions
from .registry import TASKS, Task, TaskData, get_task, stratified_patient_split
from .report import write_report
from .run import SUPERVISED, TaskRun, embed_task, run_task, supervised_baseline

__all__ = ["Task", "TaskData", "TASKS", "get_task", "stratified_patient_split", "ehr_features",
           "mimic_admissions", "embed_task", "supervised_baseline", "run_task", "TaskRun", "write_report", "SUPERVISED"]
