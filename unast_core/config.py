"""Typed configuration: one pydantic model per stage, a root `RunConfig`, and named presets.

Each stage function receives only its own sub-config (torchtune style). The root model is what the
Prefect UI renders as the flow's parameter form, what a YAML file holds, and what CLI overrides edit.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from unast_core.errors import UnastError

# memory: weights + KV cache at the regime's batch x seq_len; size: stored bytes as Appendix D counts them
BUDGET_KINDS = ("latency", "params", "memory", "size")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TeacherConfig(_Strict):
    model: str = Field("smollm2-135m", description="alias, local HF dir, .gguf file or hub id")
    cache_dir: Path | None = Field(None, description="converted teachers; default ~/.cache/unast/teachers")
    trust_remote_code: bool = Field(False, description="run the teacher's own modeling code (only if you trust it)")
    allow_pickle: bool = Field(False, description="read a checkpoint that has only pickle weights "
                               "(pytorch_model.bin) with torch.load(weights_only=True); off: safetensors only")


# The built-in docs + Wikipedia mix (unast_core.data.corpus.load_texts) and the built-in sets it draws from.
DOCS_WIKI = "cpython-docs+enwiki"
_PARTS = {DOCS_WIKI: ("cpython-docs", "enwiki")}


class DataConfig(_Strict):
    # The replacements fit the calibration domain: calibrated on enwiki instead of the docs (one store, latency 0.75,
    # bench/results/ablation.md), the student was 1.89x the teacher on news and 3.29x on the docs, where the
    # docs-calibrated default is about 1.3x on the docs and 2.2-3.0x on news. Calibrated on both (the docs and
    # an equal share of Wikipedia leads, next to the teacher's samples), it kept both. On one store with the same
    # teacher samples at latency 0.75: news 1.86x against 2.26x for the docs alone (KL 0.75 vs 0.96), Wikipedia
    # 1.95x vs 2.38x, the docs 1.52x vs 1.28x; at 0.5, news 4.69x against 6.56-6.84x on earlier docs stores.
    # Hence the default. ShortGPT on the same store gained too and still leads on news (1.75x at 0.75, 4.14x at
    # 0.5).
    source: str = Field(DOCS_WIKI, description="cpython-docs+enwiki (the CPython docs and a 600-word lead of each of "
                        "106 Wikipedia articles), cpython-docs, enwiki, a local .txt/.jsonl/.parquet file, or an HF "
                        "dataset name")
    text_field: str = "text"
    hf_split: str = "train"
    seq_len: int = Field(256, gt=1, description="tokens per packed sequence")
    calibration_seqs: int = Field(128, gt=0)
    validation_seqs: int = Field(8, gt=0)
    test_seqs: int = Field(16, gt=0)
    seed: int = 0
    # The teacher's own samples mixed into calibration and validation (see unast_core.data.generated): text
    # from the distribution the student must match, not from one domain. Held-out ablation at latency 0.75 on
    # SmolLM2-135M (bench/results/ablation.md): docs only, student/teacher perplexity on lee-news 6.74 (KL 2.07)
    # and 1.008 in-domain; half teacher samples 2.44 (KL 1.00) and 1.231 in-domain. Half, not all: a user's
    # own data still shapes the student.
    generated_fraction: float = Field(0.5, ge=0, le=1, description="share of the calibration and validation "
                                      "rows that are text sampled from the teacher (0: none)")
    generate_temperature: float = Field(1.0, gt=0)
    generate_top_p: float = Field(0.95, gt=0, le=1)
    # A random opener after BOS (LLM-QAT's data-free start) did not pay on a fresh store (bench/results/ablation.md):
    # held-out 3.01 at latency 0.75 and 6.64 at 0.5, against the default's 2.24-2.60 and 6.56-6.84.
    generate_start: Literal["bos", "random-token"] = Field("bos", description="how each teacher sample opens: "
                                                           "bos, or bos then one uniformly random ordinary token")
    # Quality is always reported on text from a domain no stage trains on, next to the in-domain test split.
    heldout: str | None = Field("lee-news", description="held-out evaluation text: lee-news (300 Australian news "
                                "articles, the Lee corpus shipped in the gensim wheel), a local file or an HF "
                                "dataset; None: in-domain only")
    heldout_seqs: int = Field(32, gt=0, description="rows of the held-out set evaluated")
    # Select ranks the short-finetuned architectures by validation loss, on rows from the same sources as the
    # calibration rows the candidates were distilled on, where fitted replacements look best: on SmolLM2-135M they
    # ranked ShortGPT's architecture last where held-out news ranked it first (bench/results/ablation.md). Ranked on
    # enwiki instead (one store, 7 checkpoints, select trained like the finetune), 8 of 9 pairs came out in their
    # held-out order against 7 of 9 by validation; the top pick matched at 0.5, not at 0.75. Off until more stores
    # say so.
    select_on: str | None = Field(None, description="text select ranks the short-finetuned architectures on "
                                  "(a third domain, neither data.source nor data.heldout): enwiki (106 Wikipedia "
                                  "articles from the gensim wheel), a local file or an HF dataset; None: the "
                                  "validation split")
    select_on_seqs: int = Field(16, gt=0, description="rows of data.select_on that select evaluates")

    @model_validator(mode="after")
    def _heldout_elsewhere(self) -> "DataConfig":
        trained = (self.source, *_PARTS.get(self.source, ()))
        if self.heldout is not None and self.heldout in trained:
            raise ValueError("data.heldout must come from a domain no stage trains on, not data.source")
        if self.select_on is not None and self.select_on in (*trained, self.heldout):
            raise ValueError("data.select_on must be a third domain, neither data.source nor data.heldout")
        return self


Width = int | float  # an absolute count (int >= 1), or a fraction of the teacher's (0 < float < 1)


class AttentionCandidate(_Strict):
    """A downsized attention. Unset fields keep the teacher's value; a fraction of `heads` keeps that share
    of the KV groups, each with all its query heads (so 1/3 of SmolLM2's 9 heads / 3 KV heads is 3 / 1)."""

    heads: Width | None = Field(None, gt=0, description="query heads")
    kv_heads: Width | None = Field(None, gt=0, description="key/value heads (GQA groups)")
    head_dim: Width | None = Field(None, gt=0, description="channels per head")


class MlpCandidate(_Strict):
    hidden: Width = Field(..., gt=0, description="MLP hidden (expansion) size")


class CompressedCandidate(_Strict):
    """A compressed copy of the teacher's sublayer (Appendix H): its first linear module(s) (QKV, or gate + up),
    its second (attention output, or down) or both, by GPTQ / round-to-nearest at `bits` or SparseGPT at
    `sparsity`; calibrated on the stored teacher states, not distilled."""

    method: Literal["gptq", "sparsegpt", "rtn"]
    bits: Literal[2, 3, 4, 8] = 4
    sparsity: float | str = 0.5
    linears: Literal["first", "second", "both"] = "both"

    @field_validator("sparsity")
    @classmethod
    def _sparsity(cls, sparsity: float | str) -> float | str:
        from unast_core.compress.spec import parse_sparsity

        parse_sparsity(sparsity)
        return sparsity

    def spec(self) -> dict[str, Any]:
        how = {"sparsity": self.sparsity} if self.method == "sparsegpt" else {"bits": self.bits}
        return {"op": "compressed", "method": self.method, **how, "linears": self.linears}


class PoolConfig(_Strict):
    """The candidate operators of every sublayer (paper Section 4.2). Teacher-dependent checks (heads that
    divide, sizes below the teacher's) run when the teacher is loaded and name the field."""

    ops: list[Literal["teacher", "identity", "linear"]] = ["teacher", "identity", "linear"]
    attention: list[AttentionCandidate] = Field(default_factory=lambda: [AttentionCandidate(heads=1 / 3)])
    mlp: list[MlpCandidate] = Field(default_factory=lambda: [MlpCandidate(hidden=0.5)])
    compressed: list[CompressedCandidate] = Field(default_factory=list, description="compressed copies of the "
                                                  "teacher's sublayers (Appendix H), e.g. [{method: gptq, bits: 4, "
                                                  "linears: both}]")
    init: Literal["teacher", "random"] = Field("teacher", description="downsized / linear candidates start from "
                                               "the teacher (importance + least squares) or at random")

    @field_validator("ops")
    @classmethod
    def _teacher_first(cls, ops: list[str]) -> list[str]:
        if "teacher" not in ops:
            raise ValueError("the pool must contain 'teacher' (the budget-free choice)")
        return ["teacher"] + [o for o in dict.fromkeys(ops) if o != "teacher"]


class DistillConfig(_Strict):
    """Layer-wise distillation of every trained candidate (paper Section 3, Table 6) on stored teacher states."""

    loss: Literal["nmse", "mse", "l1", "cosine"] = Field("nmse", description="nmse = SquareHead, MSE(t,s)/MSE(t,0)")
    seqs: int = Field(32, gt=1, description="calibration sequences captured for distillation")
    eval_seqs: int = Field(4, gt=0, description="of those, held out to measure the local error")
    steps: int = Field(30, ge=0)
    batch_size: int = Field(4, gt=0, description="sequences per step")
    lr_max: float = Field(5e-4, gt=0)
    lr_min: float = Field(5e-5, ge=0)
    eval_every: int = Field(10, gt=0)
    patience: int = Field(2, gt=0, description="evaluations without improvement before stopping early")
    engine: Literal["torch", "deepspeed"] = "torch"
    zero_stage: int = Field(0, ge=0, le=3)

    @model_validator(mode="after")
    def _sizes(self) -> "DistillConfig":
        if self.eval_seqs >= self.seqs:
            raise ValueError("eval_seqs must be smaller than seqs (the rest trains)")
        if self.lr_min > self.lr_max:
            raise ValueError("lr_min must not exceed lr_max")
        return self


class ScoreConfig(_Strict):
    # Eq. 2: e_ij = loss(model with only sublayer i replaced by candidate j) - loss(teacher).
    metric: Literal["lm_loss", "kl", "hidden_nmse"] = Field(
        "lm_loss", description="lm_loss: change of validation loss (Eq. 2); kl: KL to the teacher's logits; "
                               "hidden_nmse: normalized MSE of the final (normed) hidden state, no LM head, the fastest")
    batch_size: int = Field(4, gt=0)
    seqs: int | None = Field(3, gt=0, description="validation sequences scored (the first N; None: all)")
    # Eq. 2 adds up single replacements, but two skips in one block do not add up: on SmolLM2-135M, with the
    # 8 blocks ShortGPT removes at latency 0.75 skipped at once, the loss rose by 1.40 nats on held-out news
    # (1.35 on fresh teacher samples), where the 16 single skips sum to 1.62 (1.79) and the 8 whole-block
    # scores to 1.35 (1.47) (bench/results/additivity.md). With this on, the search sees a whole block skipped
    # at its own score (a pair term of the ILP) and takes more whole blocks (7 at latency 0.5 against 3), but
    # held out, after the finetune, it did not pay on the default store (bench/results/ablation.md): 2.33 vs
    # 2.35 at 0.75, 6.84 vs 6.72 at 0.5 (KL 0.966 vs 0.980, 2.040 vs 2.041). Off by default: a sixth more
    # scoring forwards for no measured gain.
    blocks: bool = Field(False, description="also score each block skipped whole (attention and MLP at once), "
                         "one more forward per block, and let the search use that score for the pair")


class RegimeConfig(_Strict):
    """Where latency is measured. Prefill: one forward of batch x seq_len tokens, last-token logits only.
    Decode: one new token per sequence with a KV cache already holding seq_len tokens of context."""

    kind: Literal["prefill", "decode"] = "prefill"
    batch_size: int = Field(1, gt=0)
    seq_len: int = Field(256, gt=0, description="prompt tokens (prefill) or context length (decode)")


class ComputeConfig(_Strict):
    # bf16 costs no measured quality: on SmolLM2-135M at latency 0.75, with one draw of teacher samples, the run all in
    # fp32, in fp32 but trained in bf16, and in bf16 but for the samples read 1.999, 2.004 and 2.002x the teacher's
    # perplexity held out, 2.064, 2.071 and 2.055x in-domain (bench/results/ablation.md). Sampling the teacher in bf16
    # draws other text from the same seed, which moved the result (2.076 held out, 2.149 in-domain) by as much as the
    # methods differ. The fp32 run took 24 min 59 s, bf16 21 min 47 s.
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="training and scoring precision: auto = bfloat16 on CPUs with AVX-512-BF16 or AMX "
                            "and on CUDA devices with bf16, else float32 (fp32 master weights either way)")


class CostConfig(_Strict):
    device: str = Field("auto", description="auto, cpu or cuda[:i]")
    # Timed (and exported) in fp32 by default, whatever the compute dtype. Measured on SmolLM2-135M on this
    # project's 2-core Sapphire Rapids CPU: the bf16 teacher's prefill is 2.3x faster than fp32 (125 vs 294 ms),
    # but a teacher-sized sublayer gains more from bf16 than its cheaper replacements do (a half-width MLP keeps
    # 0.56 of the teacher MLP's time in bf16), so the same latency fraction took a far deeper cut: at 0.75 the
    # bf16-timed search replaced 29 sublayers by linear layers (params 0.607 vs 0.794) and the student's held-out
    # perplexity was 104x the teacher's (bench/results/ablation.md). Set bfloat16 to budget the bf16 deployment.
    dtype: Literal["auto", "float32", "bfloat16"] | None = Field(
        "float32", description="dtype the model is timed and exported in, as deployed (None: the compute dtype)")
    regime: RegimeConfig = RegimeConfig()
    warmup: int = Field(2, ge=0)
    repeats: int = Field(11, gt=0, description="interleaved repeats; the median is kept")
    calibration_samples: int = Field(12, ge=0, description="random architectures timed to calibrate the "
                                     "table's latency prediction (0: use the table as it is)")
    engine: Literal["torch", "llama.cpp"] = Field(
        "torch", description="where the table and the architecture check are timed: torch (eager, cost.dtype) or "
                             "llama.cpp (each variant written as a deci GGUF in cost.gguf_quant; threads: this "
                             "process's cores); the final evaluation is timed in torch either way")
    gguf_quant: Literal["f16", "q8_0", "q4_k"] = Field("f16", description="llama.cpp engine: the GGUF type timed")


class SearchConfig(_Strict):
    k: int = Field(3, gt=0, description="number of diverse architectures (Eq. 4)")
    max_overlap: float = Field(0.7, gt=0, le=1, description="fraction of sublayers two solutions may share")
    time_limit_s: float = Field(30.0, gt=0)
    # A replacement is trained to imitate its teacher sublayer, so a score below the teacher's (Eq. 2 < 0) is
    # noise of a few validation sequences or a fit to their domain: on Gemma 3 270M, 23 of 144 scores were
    # negative, and the ILP took every such "free" swap, landing at 0.70-0.75 measured latency for a 0.85
    # budget. Floored, such a candidate ties with the teacher, and the teacher wins the tie.
    floor_scores: bool = Field(True, description="treat a score below the teacher's as equal to it (the teacher "
                               "is kept on a tie), so that no replacement is taken for free")
    # Every trained replacement (a linear layer, fewer heads, a narrower MLP) fits its calibration text better than
    # it transfers: its local error off-domain is 1.4-2x its calibration error (bench/results/transfer.md), while a
    # skipped sublayer has nothing fitted to lose. This prior scales their scores before the ILP. Held out, on
    # SmolLM2-135M, factor 2 against 1 on two stores, each pair with the same candidates and scores
    # (bench/results/ablation.md): at latency 0.75, 2.60 vs 2.80 and 2.35 vs 2.49 (in-domain 1.31 vs 1.27 and
    # 1.27 vs 1.23); at 0.5, mixed: 6.68 vs 7.88 (at latency 0.509 vs 0.480) and 6.72 vs 6.55.
    fitted_scale: float = Field(2.0, ge=1.0, description="multiply the score of every distilled replacement "
                                "(linear, attention, mlp) by this much before the search, a prior that what it "
                                "learned from the calibration text transfers worse than its score says; 1: off")
    # ShortGPT's architecture, finetuned like UNAST's student, beat it held out on the same store (2.05 vs 2.24 at
    # latency 0.75, 4.68 vs 6.79 at 0.5), but select, short-finetuning it next to the searched ones, ranked it below
    # them after 5 steps and after 24 (bench/results/ablation.md): the short finetune does not predict the final
    # one. Trained like the final finetune (24 KD-only steps at 3e-4), select picked it at 0.75 (by 0.01 nats;
    # held-out 2.05) on that store; on a second store it kept a searched one at both budgets, though ShortGPT's was
    # the best held out there after 24 steps (2.36 vs 2.62-2.69 at 0.75, 5.76 vs 6.86-7.89 at 0.5): select's validation
    # rows come from the calibration sources, where the distilled replacements fit best. Off by default.
    depth_seed: Literal["shortgpt", "shortened-llama"] | None = Field(
        None, description="also short-finetune, in select, the architecture this depth-pruning method settles "
                          "on for the budget (whole blocks removed), so the pick is never worse on validation "
                          "than it; None: the searched architectures only")
    # Eq. 2 scores each candidate with the rest of the model the teacher's, and the ILP adds them up, but skips in
    # different blocks cost more together than apart (bench/results/additivity.md). Refining re-scores every
    # candidate in the searched architecture's context and steps while the measured loss of the whole architecture
    # falls (unast_core.search.refine); each round costs about one score stage on `refine_seqs` rows. On SmolLM2-135M
    # at latency 0.75, 3 rounds at 8 rows, on both draws of teacher samples of one store (bench/results/ablation.md):
    # held out 1.931 against 2.076 without it and ShortGPT's 1.984 (in-domain 1.919 vs 2.149 and 2.086) on the bf16
    # draw, 1.849 against 1.999 and Shortened LLaMA's 1.923 (in-domain 1.677 vs 2.064 and 1.935) on the fp32 draw; at
    # 0.5, 5.296 against 5.399 (ShortGPT 4.188). It costs 8-10 minutes on 2 cores in bf16, about 3.7x that in fp32.
    # The smoke preset turns it off, and the paper preset (the paper's search).
    refine_rounds: int = Field(3, ge=0, description="re-linearised steps from the best searched architecture "
                               "(its candidates scored in its own context, then the ILP again); the refined "
                               "architecture joins select's shortlist; 0: off")
    refine_seqs: int = Field(8, gt=0, description="validation rows the refine steps measure on (at most "
                             "data.validation_seqs)")
    refine_metric: Literal["kl", "lm_loss"] = Field("kl", description="what refining minimises: KL to the "
                                                    "teacher or the LM loss, per token")
    # Scores in context on fewer rows halve a round, but noisier scores step worse: on one store at latency 0.75 (the
    # empty-store run of bench/results/ablation.md), 4 of the 8 rows took one step (KL 1.139 -> 0.881, then no step
    # paid) where 8 took three (-> 0.792), and the student read 2.024 held out (KL 0.843) against 1.819 (0.730).
    refine_score_seqs: int | None = Field(None, gt=0, description="of the refine rows, how many (the first) the "
                                          "candidates' scores in context run on; a step is still kept or "
                                          "rejected on all refine_seqs rows; None: all of them")
    # Timing on a shared host moves a ratio by about this much between repeats of the same measurement
    # (stop 9's side-by-side readings spread 0.009-0.055), so a measured latency holds within it.
    latency_tolerance: float = Field(0.02, ge=0, lt=1, description="a measured latency ratio holds the budget "
                                     "up to this much above it (see unast_core.search.budget)")
    target: Literal["torch", "llama.cpp", "vllm"] = Field(
        "torch", description="the engine the student is served with: llama.cpp (deci GGUF) and vllm (nemotron-nas) "
                             "restrict the pool to operators they run (unast_core.model.targets)")


class TrainConfig(_Strict):
    """Short (select) or final finetune: KD from teacher logits + LM loss, Adam, cosine decay (Table 7)."""

    steps: int = Field(20, ge=0)
    batch_size: int = Field(4, gt=0)
    # A short CPU finetune starts from a good model: a small LR keeps Adam's first steps from undoing it
    # (measured: 5 select steps reach validation loss 3.27 at 1e-4 vs 3.37 at 5e-4). Table 7's 5e-4 -> 5e-5
    # is in the paper preset.
    lr_max: float = Field(1e-4, gt=0)
    lr_min: float = Field(1e-5, ge=0)
    warmup_steps: int = Field(0, ge=0)
    kd_weight: float = Field(1.0, ge=0, description="weight of KL(teacher || student) on logits")
    lm_weight: float = Field(1.0, ge=0, description="weight of the next-token cross-entropy")
    temperature: float = Field(1.0, gt=0)
    # Held-out ablation at latency 0.75 on SmolLM2-135M, one architecture, 96 KD steps (bench/results/ablation.md):
    # training every parameter, lee-news ratio 2.64 (KL 1.12); only the replaced sublayers, 3.01 (KL 1.24) in half
    # the time (193 vs 381 s on 2 cores), and 2.83 with 192 steps in the same time. So `all` stays the default.
    trainable: Literal["all", "replaced"] = Field(
        "all", description="what the finetune updates: every parameter, or only the replaced sublayers' (the "
                           "teacher's kept sublayers, embeddings and final norm stay the teacher's)")
    grad_clip: float = Field(1.0, gt=0)
    engine: Literal["torch", "deepspeed"] = "torch"
    zero_stage: int = Field(0, ge=0, le=3)

    @model_validator(mode="after")
    def _lr_order(self) -> "TrainConfig":
        if self.lr_min > self.lr_max:
            raise ValueError("lr_min must not exceed lr_max")
        if self.kd_weight == 0 and self.lm_weight == 0:
            raise ValueError("kd_weight and lm_weight cannot both be 0")
        return self


class EvalConfig(_Strict):
    batch_size: int = Field(4, gt=0)
    latency_repeats: int = Field(21, gt=0)
    latency_warmup: int = Field(2, ge=0)
    generate_tokens: int = Field(16, ge=0, description="tokens generated by the export smoke check")


class ExportConfig(_Strict):
    """Engine formats written next to the HF checkpoint (also: `unast export DIR --format ...` afterwards)."""

    gguf: Literal["f16", "q8_0", "q4_k"] | None = Field(None, description="write model-QUANT.gguf for llama.cpp")
    nemotron_nas: bool = Field(False, description="write nemotron-nas/ for vLLM (needs search.target=vllm)")


class OrchestrationConfig(_Strict):
    """Where the fan-out stages (distill, score, select) run. Stages that time latency always run alone."""

    runner: str = Field("serial", description="serial (one task at a time, in this process); dask (a local "
                        "Dask cluster of `workers` processes; one per GPU with dask-cuda on a GPU machine); "
                        "dask://HOST:PORT (an existing Dask scheduler)")
    workers: int | None = Field(None, gt=0, description="dask: worker processes (default: GPUs on a GPU machine, "
                                "else 2); each gets cores / workers torch threads")

    @field_validator("runner")
    @classmethod
    def _runner(cls, runner: str) -> str:
        if runner in ("serial", "dask") or (runner.startswith(("dask://", "tcp://")) and ":" in runner[7:]):
            return runner
        raise ValueError(f"unknown runner {runner!r}; use serial, dask or dask://HOST:PORT")


class TrackingConfig(_Strict):
    """Where MLflow runs go (see tasks/tracking.py)."""

    uri: str | None = Field(None, description="MLflow tracking URI, e.g. http://127.0.0.1:5000; None: "
                            "MLFLOW_TRACKING_URI if set, else sqlite:///<home>/mlflow.db")

    @field_validator("uri")
    @classmethod
    def _no_credentials(cls, uri: str | None) -> str | None:
        from urllib.parse import urlsplit

        if uri is not None and "@" in urlsplit(uri).netloc:
            raise ValueError("the tracking URI must not carry credentials (they would be logged with the run); "
                             "set MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD")
        return uri


class CompressConfig(_Strict):
    """Post-training compression of the body's linear layers (Section 5.3, Table 5): on top of the finetuned
    student (`ptq.method`), or on the teacher alone (`--method gptq | sparsegpt | rtn`, with these settings).
    Calibrated on the compressed model's own activations, block by block; embedding and head stay 16-bit."""

    method: Literal["gptq", "sparsegpt", "rtn"] | None = Field(None, description="None: no compression")
    bits: Literal[2, 3, 4, 8] = Field(4, description="gptq / rtn: bits per weight")
    group_size: int | None = Field(128, gt=0, description="gptq / rtn: input columns per scale and zero point "
                                   "(None: one per output row)")
    act_order: bool = Field(False, description="gptq: quantize columns of largest Hessian diagonal first")
    sparsity: float | str = Field(0.5, description="sparsegpt: fraction of zeros (0.5) or n:m (2:4: 2 zeros in "
                                  "every 4 weights)")
    damp: float = Field(0.01, gt=0, lt=1, description="Hessian dampening, a fraction of its mean diagonal")
    calibration_seqs: int = Field(32, gt=0, description="calibration sequences the Hessians are taken on")

    @field_validator("sparsity")
    @classmethod
    def _sparsity(cls, sparsity: float | str) -> float | str:
        from unast_core.compress.spec import parse_sparsity

        parse_sparsity(sparsity)
        return sparsity


METHODS = ("unast", "unast-depth", "shortgpt", "shortened-llama", "uniform", "random-init")
PTQ_METHODS = ("gptq", "sparsegpt", "rtn")  # baselines: the teacher alone, compressed with the ptq settings


class BaselineConfig(_Strict):
    """Settings of the comparison methods (`method` other than unast)."""

    # a fine grid, so that the chosen width lands near the budget (the method itself has no other knob)
    widths: list[float] = Field([round(0.05 * k, 2) for k in range(19, 1, -1)], min_length=1,
                                description="uniform: width fractions tried (widest that meets the budget wins)")
    architecture: Path | None = Field(None, description="random-init: results.json (or its directory) of a UNAST "
                                      "run whose architecture to train from scratch; default: this run's search")
    scratch_lr_max: float = Field(5e-4, gt=0, description="random-init: peak LR (Table 7's, not the finetune's)")
    scratch_lr_min: float = Field(5e-5, ge=0)


class RunConfig(_Strict):
    preset: Literal["smoke", "cpu", "paper"] = "cpu"
    method: Literal[METHODS + PTQ_METHODS] = Field("unast", description="unast; or a baseline on the same teacher, data and "
                                     "finetune: unast-depth (pool teacher + identity), shortgpt (block influence), "
                                     "shortened-llama (per-block perplexity), uniform (one width everywhere), "
                                     "random-init (the UNAST architecture trained from scratch); gptq, sparsegpt, rtn (the teacher "
                                     "compressed with the ptq settings)")
    baseline: BaselineConfig = BaselineConfig()
    teacher: TeacherConfig = TeacherConfig()
    data: DataConfig = DataConfig()
    pool: PoolConfig = PoolConfig()
    distill: DistillConfig = DistillConfig()
    score: ScoreConfig = ScoreConfig()
    cost: CostConfig = CostConfig()
    search: SearchConfig = SearchConfig()
    select: TrainConfig = TrainConfig(steps=5)
    # The final finetune distils the teacher's logits alone (KD, no LM term), longer and at a higher LR than
    # select. Held-out ablation at latency 0.75 on SmolLM2-135M, same architecture (bench/results/ablation.md):
    # 24 KD + LM steps at 1e-4, student/teacher perplexity on lee-news 3.08 (KL 1.24), in-domain 1.17; 96 KD + LM
    # steps at 3e-4, 2.87 (KL 1.18) and 0.98 (the LM term on the docs adapts the student to them, below the
    # teacher); 96 KD steps at 3e-4, 2.61 (KL 1.09) and 1.24. With refine and the docs + Wikipedia mix, the
    # student is done well before that: the same refined architectures (bench/results/ablation.md, thirteenth
    # session) after 48, 96 and 192 steps read 1.791 (KL 0.731), 1.819 (0.730) and 1.819 (0.717) held out at
    # latency 0.75, in-domain 1.721, 1.737, 1.738; at 0.5, 48 and 96 steps read 5.309 (1.793) and 5.296 (1.791),
    # in-domain 5.580 and 5.469. Hence 48 steps, about 3.7 minutes less on 2 cores (bf16).
    finetune: TrainConfig = TrainConfig(steps=48, lm_weight=0.0, lr_max=3e-4, lr_min=3e-5)
    evaluate: EvalConfig = EvalConfig()
    export: ExportConfig = ExportConfig()
    ptq: CompressConfig = CompressConfig()
    compute: ComputeConfig = ComputeConfig()
    orchestration: OrchestrationConfig = OrchestrationConfig()
    tracking: TrackingConfig = TrackingConfig()
    budget: dict[str, float | list[float]] = Field(
        default_factory=lambda: {"latency": 0.75},
        description="fraction of the teacher's cost, e.g. {'latency': 0.75}; a list gives one model per value "
                    "(several lists: every combination)")
    output: Path = Path("unast-out")
    home: Path = Field(Path(".unast"), description="run store (reused across runs) and the MLflow database")
    seed: int = 0

    @field_validator("budget")
    @classmethod
    def _budget(cls, budget: dict[str, float | list[float]]) -> dict[str, float | list[float]]:
        if not budget:
            raise ValueError("give at least one budget, e.g. latency=0.75")
        for kind, values in budget.items():
            if kind not in BUDGET_KINDS:
                raise ValueError(f"unknown budget '{kind}'; use one of {', '.join(BUDGET_KINDS)}")
            for value in values if isinstance(values, list) else [values]:
                if not 0 < value <= 1:
                    raise ValueError(f"{kind}={value} must be in (0, 1]: a fraction of the teacher's cost")
            if isinstance(values, list) and not values:
                raise ValueError(f"budget '{kind}' has no values")
        return budget

    def budgets(self) -> list[dict[str, float]]:
        """The budget family: one {kind: fraction} per model to build (the product of listed values)."""
        family: list[dict[str, float]] = [{}]
        for kind, values in self.budget.items():
            family = [{**b, kind: float(v)} for b in family for v in (values if isinstance(values, list) else [values])]
        return list({budget_name(b): b for b in family}.values())

    def method_pool(self) -> PoolConfig:
        """The pool the method searches: UNAST-depth keeps or skips each sublayer (teacher + identity)."""
        if self.method == "unast-depth":
            return PoolConfig(ops=["teacher", "identity"], attention=[], mlp=[], init=self.pool.init)
        return self.pool

    def ptq_settings(self) -> CompressConfig | None:
        """The compression applied after the final finetune: `ptq`, or the PTQ baseline's method on the teacher."""
        if self.method in PTQ_METHODS:
            return self.ptq.model_copy(update={"method": self.method})
        return self.ptq if self.ptq.method else None

    def needs_scores(self) -> bool:
        """Whether the method searches the score table (so distillation and scoring must run)."""
        return self.method in ("unast", "unast-depth") or (
            self.method == "random-init" and self.baseline.architecture is None)

    @model_validator(mode="after")
    def _lengths(self) -> "RunConfig":
        if self.distill.seqs > self.data.calibration_seqs:
            raise ValueError(f"distill.seqs={self.distill.seqs} exceeds data.calibration_seqs={self.data.calibration_seqs}")
        if self.cost.regime.seq_len > self.data.seq_len * 64:
            raise ValueError("cost.regime.seq_len is implausibly long")
        if self.export.nemotron_nas and self.search.target != "vllm":
            raise ValueError("export.nemotron_nas needs search.target=vllm (so that every chosen operator is one "
                             "vLLM runs)")
        return self


# Named presets: plain nested dicts merged over the defaults (gpt-fast style).
PRESETS: dict[str, dict[str, Any]] = {
    # Tiny random Llama built in code, no download; the whole flow in well under 2 minutes.
    "smoke": {
        "teacher": {"model": "tiny-random-llama"},
        "data": {"source": "cpython-docs", "seq_len": 64, "calibration_seqs": 8, "validation_seqs": 4, "test_seqs": 4,
                 "heldout": None, "generated_fraction": 0.0},  # a random model: no held-out set, no samples,
        # and text that ships with Python (no download)
        "cost": {"regime": {"seq_len": 64}, "repeats": 5, "warmup": 1},
        "pool": {"attention": [{"heads": 0.5}], "mlp": [{"hidden": 0.5}]},
        "distill": {"seqs": 8, "eval_seqs": 2, "steps": 6, "batch_size": 2, "eval_every": 3},
        "search": {"k": 2, "refine_rounds": 0},
        "select": {"steps": 2, "batch_size": 2},
        "finetune": {"steps": 4, "batch_size": 2},
        "evaluate": {"latency_repeats": 5, "latency_warmup": 1, "generate_tokens": 8},
    },
    # SmolLM2-135M on 2 CPU cores: 21 min 47 s end to end on a fresh store on a 2-core AMD EPYC with AVX-512-BF16
    # without the refine step, which adds 8-10 minutes there (measured on a reused store; bench/results/ablation.md).
    "cpu": {},
    # Tables 6-7 of the paper (for GPUs): Adam, LR 5e-4 -> 5e-5 cosine, 10k finetune iterations.
    "paper": {
        "data": {"seq_len": 2048, "calibration_seqs": 1024, "validation_seqs": 64, "test_seqs": 128},
        "cost": {"regime": {"batch_size": 1, "seq_len": 4096}},
        "pool": {"attention": [{"heads": 0.5}, {"heads": 0.25}, {"head_dim": 0.5}],
                 "mlp": [{"hidden": 0.75}, {"hidden": 0.5}, {"hidden": 0.25}]},
        "distill": {"seqs": 1024, "eval_seqs": 32, "steps": 5000, "batch_size": 256, "eval_every": 250,
                    "engine": "deepspeed"},
        "search": {"k": 100, "fitted_scale": 1.0, "refine_rounds": 0},  # the paper's search: scores as measured
        "select": {"steps": 50, "batch_size": 256, "engine": "deepspeed", "lr_max": 5e-4, "lr_min": 5e-5},
        "finetune": {"steps": 10000, "batch_size": 256, "engine": "deepspeed", "zero_stage": 2, "lr_max": 5e-4,
                     "lr_min": 5e-5},
        "evaluate": {"batch_size": 8},
    },
}


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "budget":
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_budget(items: list[str]) -> dict[str, float | list[float]]:
    """`["latency=0.8,0.6", "params=0.8"]` -> {"latency": [0.8, 0.6], "params": 0.8}."""
    budget: dict[str, float | list[float]] = {}
    for item in items:
        kind, sep, value = item.partition("=")
        if not sep:
            raise UnastError(f"budget '{item}' must look like latency=0.75 (or latency=0.8,0.6 for several models)")
        try:
            values = [float(v) for v in value.split(",")]
        except ValueError:
            raise UnastError(f"budget '{item}': '{value}' is not a number or a comma-separated list") from None
        kind = kind.strip()
        if kind in budget:
            raise UnastError(f"budget '{kind}' is given twice; give one --budget {kind}=... (a comma-separated "
                             f"list, e.g. {kind}=0.8,0.6, builds one model per value)")
        budget[kind] = values[0] if len(values) == 1 else values
    return budget


def budget_name(budget: dict[str, float]) -> str:
    """{"latency": 0.8} -> "latency-0.8" (the sub-directory of one model of a budget family)."""
    return "_".join(f"{kind}-{value:g}" for kind, value in budget.items())


def set_dotted(tree: dict, dotted: str, value: Any) -> None:
    """`set_dotted(d, "finetune.steps", 10)` (values given as YAML scalars by the CLI)."""
    *parents, leaf = dotted.split(".")
    if not all(parents + [leaf]):
        raise UnastError(f"setting '{dotted}' is not a dotted field name like finetune.steps")
    node = tree
    for depth, part in enumerate(parents):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            where = ".".join(parents[:depth + 1])
            raise UnastError(f"setting '{dotted}': '{where}' is a single value, not a group of settings; "
                             f"set {where}=VALUE")
    node[leaf] = value


def build_config(preset: str = "cpu", file: Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Defaults <- preset <- YAML file <- overrides (dotted keys). Errors name the field."""
    if preset not in PRESETS:
        raise UnastError(f"unknown preset '{preset}'; use one of {', '.join(PRESETS)}")
    # Start from every default written out, so that overriding one field of a stage keeps the instance
    # defaults RunConfig sets on its others (select.steps=5, finetune.steps=24), instead of the class's.
    tree: dict[str, Any] = deep_merge(RunConfig().model_dump(mode="json"), {"preset": preset, **PRESETS[preset]})
    if file is not None:
        try:
            loaded = yaml.safe_load(Path(file).read_text()) or {}
        except (OSError, UnicodeDecodeError) as exc:
            raise UnastError(f"cannot read config file {file}: {_one_line(exc)}") from None
        except yaml.YAMLError as exc:
            raise UnastError(f"config file {file} is not valid YAML: {_describe_yaml_error(exc)}; fix the file") from None
        if not isinstance(loaded, dict):
            raise UnastError(f"config file {file} must hold a mapping of settings")
        tree = deep_merge(tree, loaded)
    for dotted, value in (overrides or {}).items():
        set_dotted(tree, dotted, value)
    return validate_config(tree)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _describe_yaml_error(exc: yaml.YAMLError) -> str:
    """PyYAML's message spans several lines (context, marks, a caret); keep the problem and where it is."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is None or problem is None:
        return _one_line(exc)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"


def validate_config(tree: dict[str, Any]) -> RunConfig:
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as exc:
        raise UnastError(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "config"
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"invalid config field '{field}': {err['msg']}{more}"
