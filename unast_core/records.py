"""Typed records the stages exchange: paths in the run store plus a few numbers, never tensors or models.

Every task returns one of these and the next task takes it as is, so a task can run in any worker process
that sees the run store. `worker` says where a record was made ("host:pid"), which is how a run shows what
ran where. `tracked()` is what the stage logs to the tracker (params, metrics, files, dicts).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from unast_core.config import TeacherConfig, TrainConfig
from unast_core.errors import UnastError
from unast_core.model.ops import OpSpec
from unast_core.store import RunStore
from unast_core.train.activations import mean_loss


def where() -> str:
    """This process, as "host:pid", plus the GPU it sees first (as dask-cuda gives each worker its own)."""
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0]
    return f"{socket.gethostname()}:{os.getpid()}" + (f":gpu{gpu}" if gpu else "")


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    worker: str = Field(default_factory=where)
    reused: bool = False

    def tracked(self) -> dict[str, Any]:
        return {"params": {"reused": self.reused}}

    def describe(self) -> str:
        """One log line about the record ("" for none)."""
        return ""


class Prepared(Record):
    """Stage 0: the teacher (how to load it in any worker), its sublayer view, the resolved pool, the data."""

    teacher: TeacherConfig
    source: str
    fingerprint: str
    model_type: str
    sublayers: list[str]           # "00.attn", "00.mlp", ...
    pool: list[dict[str, Any]]     # operator specs (see `OpSpec`); index 0 is the teacher's own
    dims: dict[str, int]
    teacher_params: int
    home: str
    run_dir: str
    data_key: str
    data_path: str                 # calibration, validation and test
    outside_paths: dict[str, str] = {}  # 'heldout' / 'select' -> its own file (text outside the data key)
    compute_dtype: str = "float32"         # training and scoring precision (autocast; fp32 master weights)
    deploy_dtype: str = "float32"          # what latency is timed in and the export is saved in
    generated_key: str | None = None       # teacher samples mixed into calibration / validation

    def compute_key(self) -> tuple[str, ...]:
        """Content-key part for work done in the compute dtype (empty for fp32: keys made before dtypes hold)."""
        return () if self.compute_dtype == "float32" else (self.compute_dtype,)

    def deploy_key(self) -> tuple[str, ...]:
        """Content-key part for work timed in the deployed dtype (empty for fp32, likewise)."""
        return () if self.deploy_dtype == "float32" else (self.deploy_dtype,)

    def describe(self) -> str:
        return (f"teacher {self.source} ({self.model_type}, {len(self.sublayers)} sublayers), compute "
                f"{self.compute_dtype}, timed in {self.deploy_dtype}, run store {self.run_dir}")

    def store(self) -> RunStore:
        return RunStore(Path(self.home), self.fingerprint)

    @property
    def kinds(self) -> list[str]:
        return [name.split(".")[1] for name in self.sublayers]

    def trained_pairs(self) -> list[tuple[int, int]]:
        """(sublayer, pool index) of every candidate that has weights to distil."""
        specs = [OpSpec.of(s) for s in self.pool]
        return [(i, j) for i, kind in enumerate(self.kinds) for j, spec in enumerate(specs)
                if spec.trained and spec.applies(kind)]


class CostTable(Record):
    """Stage 4: the lookup table's file and what the log shows of it."""

    path: str
    device: str
    regime: dict[str, Any]
    teacher: dict[str, float]
    fixed: dict[str, float]
    calibration: dict[str, Any] | None = None

    def describe(self) -> str:
        r, fit = self.regime, self.calibration
        line = (f"cost table {'reused' if self.reused else 'measured'} ({self.device}, {r['kind']} "
                f"{r['batch_size']}x{r['seq_len']})")
        if fit:
            line += (f"; latency calibration: measured = {fit['intercept']:.3f} + {fit['slope']:.3f} x table "
                     f"({len(fit['points'])} architectures, largest residual {fit['max_abs_residual']:.3f})")
        return line

    def tracked(self) -> dict[str, Any]:
        fit = {k: self.calibration[k] for k in ("intercept", "slope", "max_abs_residual")} if self.calibration else {}
        return {"params": {"reused": self.reused}, "metrics": {"teacher": self.teacher, "fixed": self.fixed,
                                                               **({"calibration": fit} if fit else {})},
                "files": [self.path]}


class States(Record):
    """Stage 1: the teacher's residual states on one split (a directory of safetensors shards)."""

    dir: str
    split: str
    loss: float
    rows: int
    seq_len: int
    boundaries: int
    row_loss: list[float]

    def mean_loss(self, rows: int | None) -> float:
        """The teacher's mean next-token loss over the first `rows` rows (all when None)."""
        return mean_loss(self.model_dump(include={"rows", "row_loss", "seq_len"}), rows)

    def tracked(self) -> dict[str, Any]:
        return {"params": {"split": self.split, "reused": self.reused}, "metrics": {"teacher_loss": self.loss}}


class Distilled(Record):
    """Stage 2, one (sublayer, candidate): its weights file (None when it failed) and its local errors."""

    index: int
    pool_index: int
    sublayer: str
    candidate: str
    spec: dict[str, Any]
    status: str
    error: str | None = None
    weights: str | None = None
    metrics: dict[str, Any] = {}

    def row(self) -> dict[str, Any]:
        """The flat row the distillation summary and table read."""
        return {**self.metrics, "index": self.index, "sublayer": self.sublayer, "candidate": self.candidate,
                "status": self.status, "error": self.error, "weights": self.weights, "reused": self.reused}


class Scored(Record):
    """Stage 3, one sublayer: Eq. 2 scores of every candidate (NaN where a candidate failed)."""

    index: int
    name: str
    path: str
    scores: list[float | None]
    losses: list[float | None]
    errors: list[str | None]
    block_score: float | None = None  # an attention sublayer's whole block skipped (score.blocks)


class ScoreTable(Record):
    """Stage 3, gathered: the ILP's input (json) and a parquet table, plus how many sublayers were reused."""

    path: str
    parquet: str
    reused_sublayers: int
    sublayers: int

    def tracked(self) -> dict[str, Any]:
        return {"params": {"reused_sublayers": self.reused_sublayers}, "files": [self.path, self.parquet]}


class Architecture(BaseModel):
    """One architecture: the operator of every sublayer, the weights of its trained candidates, its costs."""

    model_config = ConfigDict(extra="forbid")

    rank: int = 0
    layers: list[dict[str, dict[str, Any]]]
    summary: str
    weights: dict[str, str] = {}                 # sublayer index -> distilled weights file
    choice: list[int] | None = None
    score_sum: float | None = None
    predicted: dict[str, float] = {}
    predicted_ratio: dict[str, float] = {}
    table_ratio: dict[str, float] = {}
    measured_ratio: float | None = None


class Searched(Record):
    """Stage 5 for one budget: K architectures (Eq. 3-4), held to the measured latency when budgeted."""

    path: str
    budget: dict[str, float]
    architectures: list[Architecture]
    kept: list[int] = []                          # ranks that hold the measured budget
    note: str = ""

    def tracked(self) -> dict[str, Any]:
        return {"metrics": {"solutions": len(self.architectures)}, "files": [self.path],
                "dicts": {"architectures.json": [a.model_dump() for a in self.architectures]}}


class Trained(Record):
    """Stages 6-7: one finetuned architecture (a failed one keeps its error so the others' work stands)."""

    status: str
    label: str
    layers: list[dict[str, dict[str, Any]]]
    error: str | None = None
    candidates: dict[str, str] = {}
    weights: str | None = None
    val_loss_before: float | None = None
    val_loss: float | None = None
    steps: int = 0
    tokens: int = 0
    dtype: str = "float32"
    wall_s: float = 0.0
    curve: list[dict[str, float]] = []
    compression: dict[str, Any] | None = None   # post-training compression (tasks.ptq): packed file, layers, size

    def require_ok(self, what: str) -> "Trained":
        if self.status != "ok":
            raise UnastError(f"{what} failed: {self.error}")
        return self

    def tracked(self) -> dict[str, Any]:
        metrics = {k: getattr(self, k) for k in ("val_loss_before", "val_loss", "wall_s") if getattr(self, k) is not None}
        return {"params": {"label": self.label, "status": self.status, "reused": self.reused}, "metrics": metrics,
                "curve": self.curve}


class Choice(Record):
    """What a method hands to the final finetune: the architecture and its starting weights."""

    arch: Architecture
    stem: str                                    # file stem of this choice's final checkpoint
    chart: str                                   # where its architecture chart goes
    candidates: dict[str, str] = {}              # distilled weights per sublayer index
    init: str | None = None                      # or a whole student checkpoint
    finetune: TrainConfig
    results: dict[str, Any] = {}                 # what results.json records of how the method chose

    def tracked(self) -> dict[str, Any]:
        return {"params": {"summary": self.arch.summary}, "metrics": {"measured_latency": self.arch.measured_ratio},
                "dicts": {"choice.json": self.results}}


class Shortlist(Record):
    """A method's choice for one budget: the architectures to short-finetune and pick from (`select`: UNAST's
    K), or the one architecture a baseline settled on (`select` False)."""

    choices: list[Choice]
    select: bool = False
    stages: dict[str, dict[str, Any]] = {}       # what the method's own steps track (the ILP's solutions, ...)

    def tracked(self) -> dict[str, Any]:
        return {"metrics": {"architectures": len(self.choices)}}


class Evaluation(Record):
    """Stage 8a: quality and measured cost of the student against the teacher."""

    teacher: dict[str, Any]
    student: dict[str, Any]
    regime: dict[str, Any]
    test_tokens: int
    heldout_tokens: int = 0

    def tracked(self) -> dict[str, Any]:
        return {"metrics": {"teacher": self.teacher, "student": self.student}}


class Exported(Record):
    dir: str
    sample: str


def weights_matrix(prep: Prepared, distilled: list[Distilled]) -> list[list[str | dict | None]]:
    """[sublayer][candidate]: the distilled weights file, {"error": why} for a failed candidate, None where
    the candidate is untrained (teacher, identity) or does not apply (the scores' input)."""
    weights: list[list[str | dict | None]] = [[None] * len(prep.pool) for _ in prep.sublayers]
    for d in distilled:
        weights[d.index][d.pool_index] = d.weights if d.status == "ok" else {"error": d.error}
    return weights


class DistillReport(Record):
    """Stage 2, gathered: how many candidates trained, were reused or failed, the paper's Table 1 and Figure 4."""

    trained: int
    reused_count: int
    failed: list[str]
    errors: dict[str, list[float | None]]
    table1: str
    rows: list[dict[str, Any]]
    weights: list[list[str | dict | None]]       # [sublayer][candidate], the scores' input (`weights_matrix`)
    figure: str | None = None

    def tracked(self) -> dict[str, Any]:
        return {"params": {"reused": self.reused_count, "trained": self.trained, "failed": len(self.failed)},
                "dicts": {"distill.json": self.rows, "table1.md": self.table1},
                "files": [self.figure] if self.figure else []}
