"""Candidate operators: the configured pool resolved against the teacher, and how a candidate starts.

A pool is a list of operator specs (see `modeling_unast.OPS`); downsized sizes in the config may be
fractions of the teacher's and are turned into counts here, where the teacher's shape is known, so a bad
grid is an error naming its field.

Teacher init (ours, measured against random init in the tests and the Table 1 bench): pick the heads /
channels that matter most on calibration activations, then refit the output projection by least squares
so the smaller operator reproduces the teacher's output as well as a linear map can.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Callable

import torch
from torch import nn

from unast_core.model.adapters import Adapter
from unast_core.config import PRESETS, AttentionCandidate, PoolConfig
from unast_core.errors import UnastError
from unast_core.model.modeling_unast import family_of, teacher_dims
from unast_core.model.ops import OpSpec

Modules = dict[str, nn.Module]


def _count(value: int | float, full: int, field: str, even: bool = False) -> int:
    if isinstance(value, float) and value < 1:  # a fraction of the teacher's size
        return max(2, 2 * round(value * full / 2)) if even else max(1, round(value * full))
    if value != int(value):
        raise UnastError(f"invalid config field '{field}': {value} is neither a whole count nor a fraction below 1")
    return int(value)


def _bad(field: str, why: str) -> UnastError:
    return UnastError(f"invalid config field '{field}': {why}")


def _attention_problem(heads: int, kv: int, d: int, config: Any, field: str) -> UnastError | None:
    """The first reason (heads, kv, d) is not a valid downsized attention of this teacher, or None."""
    dims, rope = teacher_dims(config), family_of(config)["rope"]
    if heads > dims["heads"]:
        return _bad(f"{field}.heads", f"{heads} is larger than the teacher's {dims['heads']} query heads")
    if kv > dims["kv_heads"]:
        return _bad(f"{field}.kv_heads", f"{kv} is larger than the teacher's {dims['kv_heads']} KV heads")
    if heads % kv:
        return _bad(f"{field}.heads", f"{heads} query heads do not divide evenly over {kv} KV heads")
    if config.model_type == "gpt2" and kv != heads:
        return _bad(f"{field}.kv_heads", "GPT-2 has no grouped-query attention: kv_heads must equal heads")
    if d > dims["head_dim"]:
        return _bad(f"{field}.head_dim", f"{d} is larger than the teacher's head dim {dims['head_dim']}")
    if rope and d % 2:
        return _bad(f"{field}.head_dim", f"{d} must be even (rotary embeddings rotate channel pairs)")
    if (heads, kv, d) == (dims["heads"], dims["kv_heads"], dims["head_dim"]):
        return _bad(field, "this is the teacher's own attention size; make it smaller or drop it")
    return None


def attention_spec(cand: AttentionCandidate, config: Any, field: str) -> dict[str, Any]:
    dims, rope = teacher_dims(config), family_of(config)["rope"]
    n_q, n_kv, full_d = dims["heads"], dims["kv_heads"], dims["head_dim"]
    group = n_q // n_kv
    kv = _count(cand.kv_heads, n_kv, f"{field}.kv_heads") if cand.kv_heads is not None else None
    if cand.heads is None:
        heads = n_q if kv is None else kv * group
    elif isinstance(cand.heads, float) and cand.heads < 1 and kv is None:  # keep a share of whole KV groups
        kv = max(1, round(cand.heads * n_kv))
        heads = kv * group
    else:
        heads = _count(cand.heads, n_q, f"{field}.heads")
    if kv is None:
        if heads % group:
            raise _bad(f"{field}.heads", f"{heads} query heads do not fill whole groups of {group} (the teacher has "
                                         f"{n_q} query / {n_kv} KV heads); set {field}.kv_heads too")
        kv = heads // group
    d = _count(cand.head_dim, full_d, f"{field}.head_dim", even=rope) if cand.head_dim is not None else full_d
    problem = _attention_problem(heads, kv, d, config, field)
    if problem:
        raise problem
    return {"op": "attention", "heads": heads, "kv_heads": kv, "head_dim": d}


def _bound(value: int | float | None, full: int, step: int = 1) -> int:
    """The most a shipped entry may keep of a teacher size `full`: unset keeps it all; a fraction keeps
    its rounded share, at least one step and at least one step less than the whole (so it shrinks)."""
    if value is None:
        return full
    if isinstance(value, float) and value < 1:
        return min(max(step, step * round(value * full / step)), full - step)
    return min(int(value), full)


def fitted_attention(cand: AttentionCandidate, config: Any, field: str) -> dict[str, Any] | None:
    """A shipped (not user-written) attention entry made to fit this teacher: as written where valid, else
    the largest valid size within its share (fewer query heads inside the groups, a smaller head dim),
    else None. "A third of the KV groups" is a whole group on a 1-KV-head teacher (Gemma 3 270M: 4 query
    heads / 1 KV head), so there it becomes one query head on that group instead of stopping the run."""
    try:
        return attention_spec(cand, config, field)
    except UnastError:
        pass
    dims, rope = teacher_dims(config), family_of(config)["rope"]
    max_q, max_kv = _bound(cand.heads, dims["heads"]), _bound(cand.kv_heads, dims["kv_heads"])
    step = 2 if rope else 1
    d = _bound(cand.head_dim, dims["head_dim"], step) // step * step
    pairs = [(q, kv) for q in range(1, max_q + 1) for kv in range(1, min(q, max_kv) + 1)
             if d >= 1 and _attention_problem(q, kv, d, config, field) is None]
    if not pairs:
        return None
    # The most weights (q/o scale with heads, k/v with kv_heads); on a tie, more whole groups.
    heads, kv = max(pairs, key=lambda p: (p[0] + p[1], p[1]))
    return {"op": "attention", "heads": heads, "kv_heads": kv, "head_dim": d}


def _shipped(entries: list[Any], key: str, preset: str | None) -> bool:
    """Whether a pool list is one the project ships (PoolConfig's default, or the preset's), not the user's.

    `build_config` writes every default out before merging, so pydantic's fields-set cannot tell; the list
    is compared instead. Without `preset` every preset's list counts (smoke's `heads: 0.5` then reads as
    shipped too); a user who writes out exactly a shipped list gets the shipped behaviour."""
    kind = type(PoolConfig.model_fields[key].default_factory()[0])
    presets = [PRESETS[preset]] if preset in PRESETS else list(PRESETS.values()) if preset is None else []
    shipped = [PoolConfig.model_fields[key].default_factory()]
    shipped += [[kind(**e) for e in p["pool"][key]] for p in presets if key in p.get("pool", {})]
    return any(entries == s for s in shipped)


def resolve_pool(cfg: PoolConfig, config: Any, preset: str | None = None,
                 warn: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Pool config -> operator specs for this teacher (teacher first, duplicates dropped).

    An entry the user wrote that does not fit the teacher is an error naming its field. A shipped entry
    (the default grid, or `preset`'s; see `_shipped`) must work on every teacher of a supported family, so
    it shrinks to the nearest smaller valid size, or is dropped with one line through `warn` (default: the
    "unast" logger)."""
    warn = warn or logging.getLogger("unast").warning
    dims = teacher_dims(config)
    full = dims["hidden"]
    specs = [{"op": op} for op in cfg.ops]
    lenient = _shipped(cfg.attention, "attention", preset)
    for i, c in enumerate(cfg.attention):
        field = f"pool.attention.{i}"
        spec = fitted_attention(c, config, field) if lenient else attention_spec(c, config, field)
        if spec is None:
            sizes = ", ".join(f"{k}={v:g}" for k, v in c.model_dump(exclude_none=True).items())
            warn(f"default pool entry {field} ({sizes}) has no smaller valid size on this teacher ({dims['heads']} "
                 f"query / {dims['kv_heads']} KV heads, head dim {dims['head_dim']}); dropped")
        else:
            specs.append(spec)
    lenient = _shipped(cfg.mlp, "mlp", preset)
    for i, cand in enumerate(cfg.mlp):
        field = f"pool.mlp.{i}.hidden"
        hidden = _bound(cand.hidden, full) if lenient else _count(cand.hidden, full, field)
        if lenient and hidden < 1:
            warn(f"default pool entry pool.mlp.{i} (hidden={cand.hidden:g}) has no smaller valid size on this "
                 f"teacher's MLP hidden size {full}; dropped")
            continue
        if hidden >= full:
            raise _bad(field, f"{hidden} is not smaller than the teacher's MLP hidden size {full}")
        specs.append({"op": "mlp", "hidden": hidden})
    for i, cand in enumerate(cfg.compressed):
        _check_pattern(cand.method, cand.sparsity, cand.linears, dims, f"pool.compressed.{i}.sparsity")
        specs.append(cand.spec())
    unique = {OpSpec.of(s).name: s for s in reversed(specs)}
    return [s for s in specs if unique.get(OpSpec.of(s).name) is s]


def _check_pattern(method: str, sparsity: float | str, linears: str, dims: dict[str, int], field: str) -> None:
    if method == "sparsegpt":
        from unast_core.compress.spec import check_pattern

        try:
            check_pattern(sparsity, linears, dims)
        except ValueError as exc:
            raise _bad(field, str(exc)) from None


# --- running one sublayer from a stored residual state ----------------------------------------------


class SublayerRunner:
    """Runs one sublayer of the teacher (or a candidate in its place) on residual states h (B, T, H) and
    returns what it adds to the residual stream. An MLP sublayer is called directly; an attention
    sublayer runs inside the model (for positions, masks and the family's own attention code) from `h`
    and stops as soon as the attention's residual output exists."""

    def __init__(self, adapter: Adapter, index: int):
        self.adapter = adapter
        self.index = index
        self.sub = adapter.sublayers[index]
        self.block = adapter.blocks[self.sub.block]
        self.names = {role: adapter.family[key] for role, key in
                      (("op", self.sub.kind), ("pre", f"{self.sub.kind}_pre"), ("post", f"{self.sub.kind}_post"))}

    def teacher_modules(self) -> Modules:
        return {n: getattr(self.block, n) for n in self.names.values() if n is not None}

    def op_name(self) -> str:
        return self.names["op"]

    def delta(self, h: torch.Tensor, modules: Modules | None = None) -> torch.Tensor:
        modules = modules or self.teacher_modules()
        if self.sub.kind == "mlp":
            x = h
            for role in ("pre", "op", "post"):
                if self.names[role] is not None:
                    x = modules[self.names[role]](x)
            return x
        with self.adapter.installed({self.index: modules}):
            return self.adapter.run_until(self.sub.block, h, getattr(self.block, self.adapter.family["mlp_pre"])) - h


def _record(module: nn.Module, sink: dict[str, list[torch.Tensor]], key: str, inputs: bool) -> Any:
    def hook(mod: nn.Module, args: tuple, output: Any) -> None:
        value = args[0] if inputs else (output[0] if isinstance(output, tuple) else output)
        sink.setdefault(key, []).append(value.detach().reshape(-1, value.shape[-1]))
    return module.register_forward_hook(hook)


@torch.no_grad()
def _recorded(runner: SublayerRunner, h: torch.Tensor, modules: Modules | None, taps: dict[str, tuple[nn.Module, bool]],
              batch: int = 4) -> dict[str, torch.Tensor]:
    """Run the sublayer on h in batches with forward hooks; {tap: (tokens, features)} and "delta"."""
    sink: dict[str, list[torch.Tensor]] = {}
    handles = [_record(module, sink, key, inputs) for key, (module, inputs) in taps.items()]
    deltas = []
    try:
        for start in range(0, len(h), batch):
            deltas.append(runner.delta(h[start:start + batch], modules).reshape(-1, h.shape[-1]))
    finally:
        for handle in handles:
            handle.remove()
    return {"delta": torch.cat(deltas), **{k: torch.cat(v) for k, v in sink.items()}}


def ridge(x: torch.Tensor, y: torch.Tensor, bias: bool, damping: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Least squares y ~ x W^T + b (float64, lightly damped): returns W (out, in) and b (out) or None."""
    x64, y64 = x.double(), y.double()
    if bias:
        x64 = torch.cat([x64, torch.ones(len(x64), 1, dtype=x64.dtype)], dim=1)
    gram = x64.T @ x64
    gram += damping * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype)
    sol = torch.linalg.solve(gram, x64.T @ y64)  # (in [+1], out)
    weight = sol[:x.shape[1]].T.to(x.dtype)
    return weight, (sol[x.shape[1]].to(x.dtype) if bias else None)


def _set_linear(layer: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Write W (out, in) into a Linear, or into a GPT-2 Conv1D (which stores in x out)."""
    layer.weight.data.copy_(weight if isinstance(layer, nn.Linear) else weight.T)
    if bias is not None and layer.bias is not None:
        layer.bias.data.copy_(bias)


def _top(scores: torch.Tensor, k: int) -> list[int]:
    return sorted(torch.topk(scores, k).indices.tolist())


def own_copy(runner: SublayerRunner, modules: Modules) -> Modules:
    """Deep-copy the modules that are still the teacher's own (norms), so training never touches the teacher."""
    teacher = runner.teacher_modules()
    return {n: copy.deepcopy(m) if teacher.get(n) is m else m for n, m in modules.items()}


# --- initialisation ----------------------------------------------------------------------------------


def init_operator(runner: SublayerRunner, spec: dict[str, Any], h: torch.Tensor, how: str = "teacher",
                  max_tokens: int = 8192) -> Modules:
    """The starting modules of a trained candidate, from calibration states h (N, T, H)."""
    adapter, index = runner.adapter, runner.index
    if how == "random":
        modules = own_copy(runner, adapter.build(index, spec))
        for module in modules[runner.op_name()].modules():
            if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":
                nn.init.normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        return modules
    rows = max(1, min(len(h), max_tokens // h.shape[1]))
    h = h[:rows]
    op = spec["op"]
    if op == "linear":
        modules = own_copy(runner, adapter.build(index, spec))
        pre = runner.names["pre"]
        with torch.no_grad():
            x = modules[pre](h).reshape(-1, h.shape[-1]) if pre else h.reshape(-1, h.shape[-1])
        y = _recorded(runner, h, None, {})["delta"]
        _set_linear(modules[runner.op_name()].proj, *ridge(x, y, bias=True))
        return modules
    if op == "mlp":
        return own_copy(runner, _init_mlp(runner, spec, h))
    if op == "attention":
        return own_copy(runner, _init_attention(runner, spec, h))
    if op == "compressed":
        return own_copy(runner, _init_compressed(runner, spec, h))
    raise ValueError(f"operator {op!r} is not trained")


def _out_proj(module: nn.Module) -> nn.Module:
    for name in ("down_proj", "o_proj", "c_proj"):
        if hasattr(module, name):
            return getattr(module, name)
    raise UnastError(f"cannot find the output projection of {type(module).__name__}")


def _columns(layer: nn.Module) -> torch.Tensor:
    """Weight as (out, in) for Linear and Conv1D alike."""
    return layer.weight.detach() if isinstance(layer, nn.Linear) else layer.weight.detach().T


def _init_mlp(runner: SublayerRunner, spec: dict[str, Any], h: torch.Tensor) -> Modules:
    mlp = runner.teacher_modules()[runner.op_name()]
    down = _out_proj(mlp)
    rec = _recorded(runner, h, None, {"act": (down, True), "out": (mlp, False)})
    importance = rec["act"].pow(2).mean(0).sqrt() * _columns(down).norm(dim=0)
    channels = _top(importance, spec["hidden"])
    modules = runner.adapter.build(runner.index, spec, {"channels": channels})
    new_down = _out_proj(modules[runner.op_name()])
    _set_linear(new_down, *ridge(rec["act"][:, channels], rec["out"], bias=new_down.bias is not None))
    return modules


def _init_attention(runner: SublayerRunner, spec: dict[str, Any], h: torch.Tensor) -> Modules:
    attn = runner.teacher_modules()[runner.op_name()]
    dims = teacher_dims(runner.adapter.model.config)
    n_q, n_kv, hd = dims["heads"], dims["kv_heads"], dims["head_dim"]
    group = n_q // n_kv
    out = _out_proj(attn)
    if hasattr(attn, "c_attn"):
        rec = _recorded(runner, h, None, {"qkv": (attn.c_attn, False), "o_in": (out, True), "out": (attn, False)})
        q, k, v = rec["qkv"].split(rec["qkv"].shape[1] // 3, dim=1)
    else:
        rec = _recorded(runner, h, None, {"q": (attn.q_proj, False), "k": (attn.k_proj, False),
                                         "v": (attn.v_proj, False), "o_in": (out, True), "out": (attn, False)})
        q, k, v = rec["q"], rec["k"], rec["v"]
    w_o = _columns(out)  # (H, n_q * hd)
    o_in = rec["o_in"].view(-1, n_q, hd)
    # Head importance: the energy each head contributes to the attention's output.
    head_imp = torch.stack([(o_in[:, i] @ w_o[:, i * hd:(i + 1) * hd].T).pow(2).sum(1).mean() for i in range(n_q)])
    kv_keep = _top(head_imp.view(n_kv, group).sum(1), spec["kv_heads"])
    per_kv = spec["heads"] // spec["kv_heads"]
    heads: list[int] = []
    for g in kv_keep:
        own = sorted(range(g * group, (g + 1) * group), key=lambda i: -head_imp[i].item())
        others = [i for i in torch.argsort(head_imp, descending=True).tolist() if i not in own and i not in heads]
        heads += (own + others)[:per_kv]
    # Channel importance per head dim: |q| * |k| for query/key channels (pairs for rotary), |v| * |W_o| for values.
    rms_q = q.view(-1, n_q, hd).pow(2).mean(0).sqrt()
    rms_k = k.view(-1, n_kv, hd).pow(2).mean(0).sqrt()
    rms_v = v.view(-1, n_kv, hd).pow(2).mean(0).sqrt()
    owner = torch.arange(n_q) // group
    qk_score = (rms_q * rms_k[owner]).sum(0)
    v_score = (rms_v[owner] * w_o.norm(dim=0).view(n_q, hd)).sum(0)
    d = spec["head_dim"]
    if runner.adapter.family["rope"] and d < hd:
        pairs = _top(qk_score[:hd // 2] + qk_score[hd // 2:], d // 2)
        qk_dims = pairs + [p + hd // 2 for p in pairs]
    else:
        qk_dims = _top(qk_score, d)
    v_dims = _top(v_score, d)
    modules = runner.adapter.build(runner.index, spec, {"heads": heads, "kv_heads": kv_keep, "qk_dims": qk_dims,
                                                        "v_dims": v_dims})
    new_out = _out_proj(modules[runner.op_name()])
    rec_new = _recorded(runner, h, modules, {"o_in": (new_out, True)})
    _set_linear(new_out, *ridge(rec_new["o_in"], rec["out"], bias=getattr(new_out, "bias", None) is not None))
    return modules


def _init_compressed(runner: SublayerRunner, spec: dict[str, Any], h: torch.Tensor) -> Modules:
    """The teacher's sublayer with the linear modules `spec["linears"]` compressed by `spec["method"]`,
    calibrated on their inputs when the teacher's sublayer runs on h (Appendix H: no distillation)."""
    from unast_core.compress.candidates import compress_linears, linears_of, settings

    teacher_op = runner.teacher_modules()[runner.op_name()]
    taps = {name: (layer, True) for name, layer in linears_of(teacher_op, spec["linears"]).items()}
    rec = _recorded(runner, h, None, taps)
    modules = runner.adapter.build(runner.index, spec)
    compress_linears(linears_of(modules[runner.op_name()], spec["linears"]), rec, settings(spec))
    return modules


# --- saving / loading a trained candidate -------------------------------------------------------------


def candidate_state(modules: Modules) -> dict[str, torch.Tensor]:
    return {f"{name}.{key}": value.detach().cpu().contiguous() for name, module in modules.items()
            for key, value in module.state_dict().items()}


def load_candidate_modules(adapter: Adapter, index: int, spec: dict[str, Any], state: dict[str, torch.Tensor]) -> Modules:
    """Rebuild a trained candidate's modules from its saved state (teacher norms are copied, not shared)."""
    modules = own_copy(SublayerRunner(adapter, index), adapter.build(index, spec))
    load_candidate_state(modules, state)
    return modules


def load_candidate_state(modules: Modules, state: dict[str, torch.Tensor]) -> None:
    """Load a `candidate_state` into modules of the same names (strict for every module with weights)."""
    for name, module in modules.items():
        part = {key[len(name) + 1:]: value for key, value in state.items() if key.startswith(name + ".")}
        if part or list(module.state_dict()):
            module.load_state_dict(part, strict=True)
