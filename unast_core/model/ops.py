"""The typed operator spec: the one place that knows a candidate's name, label, the sublayer kinds it
applies to, and whether it is trained.

On disk (score tables, architectures, the exported `config.json`) a spec is the plain dict
`{"op": ..., <sizes>}`; `OpSpec.of(d)` reads one and `spec.as_dict()` writes it back, so the exported
modeling code needs nothing but that dict.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

Op = Literal["teacher", "identity", "linear", "attention", "mlp", "compressed"]
OPS = ("teacher", "identity", "linear", "attention", "mlp", "compressed")
KINDS = ("attn", "mlp")
# Operators distilled on the calibration text (search.fitted_scale scales their scores).
DISTILLED_OPS = ("linear", "attention", "mlp")
# Operators whose weights a per-candidate task makes (distilled; a compressed teacher sublayer is calibrated,
# not distilled: Appendix H).
TRAINED_OPS = DISTILLED_OPS + ("compressed",)


class OpSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    op: Op
    heads: int | None = None       # attention: query heads
    kv_heads: int | None = None    # attention: key/value heads (GQA groups)
    head_dim: int | None = None    # attention: channels per head
    hidden: int | None = None      # mlp: hidden (expansion) size
    # compressed: the teacher's sublayer with its first (QKV / gate+up), second (output / down) or both
    # linear modules compressed by GPTQ / SparseGPT / round-to-nearest (Appendix H)
    method: Literal["gptq", "sparsegpt", "rtn"] | None = None
    bits: int | None = None
    sparsity: float | str | None = None
    linears: Literal["first", "second", "both"] | None = None

    @classmethod
    def of(cls, spec: "OpSpec | dict[str, Any]") -> "OpSpec":
        if isinstance(spec, OpSpec):
            return spec
        if spec.get("op") not in OPS:
            raise ValueError(f"unknown operator {spec.get('op')!r}; use one of {', '.join(OPS)}")
        return cls(**spec)

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)

    @property
    def name(self) -> str:
        """File-safe name: "linear", "attn-h3-kv1-d64", "mlp-768"."""
        if self.op == "attention":
            return f"attn-h{self.heads}-kv{self.kv_heads}-d{self.head_dim}"
        if self.op == "mlp":
            return f"mlp-{self.hidden}"
        if self.op == "compressed":
            return f"{self._how.replace(':', 'of').replace(' ', '')}-{self.linears}"
        return self.op

    @property
    def _how(self) -> str:
        """"gptq4", "rtn8", "sparsegpt 2:4", "sparsegpt 0.5"."""
        return f"sparsegpt {self.sparsity}" if self.method == "sparsegpt" else f"{self.method}{self.bits}"

    @property
    def label(self) -> str:
        """Short label for figures and tables: "teacher", "skip", "linear", "attn h3/kv1/d64", "mlp 768"."""
        if self.op == "identity":
            return "skip"
        if self.op == "attention":
            return f"attn h{self.heads}/kv{self.kv_heads}/d{self.head_dim}"
        if self.op == "mlp":
            return f"mlp {self.hidden}"
        if self.op == "compressed":
            return f"{self._how} {self.linears}"
        return self.op

    @property
    def kinds(self) -> tuple[str, ...]:
        """Sublayer kinds this operator can replace: a downsized attention only attention, and so on."""
        return {"attention": ("attn",), "mlp": ("mlp",)}.get(self.op, KINDS)

    def applies(self, kind: str) -> bool:
        return kind in self.kinds

    @property
    def trained(self) -> bool:
        """Whether the operator has weights of its own to distil (teacher and identity have none)."""
        return self.op in TRAINED_OPS

    @property
    def category(self) -> str:
        """teacher | identity | linear | narrower (a downsized attention or MLP) | compressed."""
        return "narrower" if self.op in ("attention", "mlp") else self.op


