"""Stage 2, distill: train one candidate operator to mimic one teacher sublayer (paper Section 3).

The data are the teacher's residual states stored by stage 1: the candidate sees the state entering
the sublayer and must reproduce what the teacher sublayer adds to the residual stream. Only the two
boundary files of this sublayer are read. The last `eval_seqs` sequences are held out; the local error
reported is the normalized MSE ("SquareHead": MSE(t, s) / MSE(t, 0)) on them, so skipping the sublayer
(s = 0) scores exactly 1.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from unast_core.train.activations import load_boundary
from unast_core.model.adapters import Adapter
from unast_core.config import DistillConfig, TrainConfig
from unast_core.train.engine import make_engine
from unast_core.train.finetune import cosine_lr
from unast_core.model.operators import Modules, SublayerRunner, init_operator
from unast_core.train.precision import autocast


def nmse(target: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    return (target - pred).pow(2).mean() / target.pow(2).mean().clamp_min(1e-12)


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "nmse": nmse,
    "mse": lambda t, s: (t - s).pow(2).mean(),
    "l1": lambda t, s: (t - s).abs().mean(),
    "cosine": lambda t, s: 1 - nn.functional.cosine_similarity(t, s, dim=-1).mean(),
}


class _Candidate(nn.Module):
    """The candidate's modules as one trainable module whose forward is the sublayer's residual update
    (so a DeepSpeed engine, ZeRO-3 included, sees every forward)."""

    def __init__(self, runner: SublayerRunner, modules: Modules):
        super().__init__()
        self.runner = runner
        self.names = list(modules)
        self.parts = nn.ModuleList(modules[n] for n in self.names)

    def modules_dict(self) -> Modules:
        return dict(zip(self.names, self.parts))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.runner.delta(h, self.modules_dict())


@torch.no_grad()
def _predict(runner: SublayerRunner, modules: Modules | None, h: torch.Tensor, batch: int = 4) -> torch.Tensor:
    """The sublayer's residual update for all of h, in batches (teacher modules when None)."""
    return torch.cat([runner.delta(h[start:start + batch], modules) for start in range(0, len(h), batch)])


def _nmse64(target: torch.Tensor, pred: torch.Tensor) -> float:
    return (target - pred).double().pow(2).sum().item() / max(target.double().pow(2).sum().item(), 1e-30)


def local_error(runner: SublayerRunner, modules: Modules | None, h: torch.Tensor, target: torch.Tensor,
                batch: int = 4) -> float:
    """Normalized MSE of the sublayer's residual update over all of h (teacher modules when None)."""
    return _nmse64(target, _predict(runner, modules, h, batch))


def distill(adapter: Adapter, index: int, spec: dict[str, Any], states_dir: Path, cfg: DistillConfig,
            init: str = "teacher", seed: int = 0, on_step: Callable[[int, float], None] | None = None,
            dtype: str = "float32") -> tuple[Modules, dict[str, Any]]:
    """Initialise and train candidate `spec` at sublayer `index`. Returns its modules and metrics
    {"status", "nmse_identity", "nmse_init", "nmse", "loss_init", "loss", "steps", "wall_s", ...} where the
    nmse* and loss* values are measured on the held-out sequences (loss* with the configured loss); a
    non-finite loss gives status "failed" (and the init's modules). Training steps run under autocast to
    `dtype` (fp32 master weights); the local errors are measured in fp32."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    runner = SublayerRunner(adapter, index)
    device = next(adapter.model.parameters()).device  # train where the teacher sits (a worker's GPU, or the CPU)
    stored = load_boundary(states_dir, index)
    h = stored.to(device=device, dtype=torch.float32)
    if stored.dtype == torch.float32:
        target = load_boundary(states_dir, index + 1).to(device) - h
    else:  # a difference of two rounded states is mostly rounding: the teacher sublayer's own update on h
        target = _predict(runner, None, h)
    n_eval = min(cfg.eval_seqs, len(h) - 1)
    train_h, eval_h = h[:-n_eval], h[-n_eval:]
    train_t, eval_t = target[:-n_eval], target[-n_eval:]
    modules = init_operator(runner, spec, train_h, init)
    model = _Candidate(runner, modules).train()
    model.requires_grad_(True)
    loss_fn = LOSSES[cfg.loss]
    pred = _predict(runner, modules, eval_h)
    metrics: dict[str, Any] = {"status": "ok", "error": None, "loss_name": cfg.loss, "init": init,
                               "nmse_identity": 1.0, "nmse_init": _nmse64(eval_t, pred),
                               "params": sum(p.numel() for p in model.parameters()),
                               "loss_init": loss_fn(eval_t, pred).item()}
    best, best_state, stale, curve = metrics["nmse_init"], copy.deepcopy(model.state_dict()), 0, []
    steps_done, train_s = 0, 0.0
    # A least-squares linear layer already minimises the (normalized) MSE on the training states.
    # A compressed teacher sublayer is calibrated at init, not distilled (Appendix H).
    closed_form = (spec["op"] == "linear" and init == "teacher" and cfg.loss in ("nmse", "mse")) or \
        spec["op"] == "compressed"
    metrics["closed_form"] = closed_form
    if cfg.steps and not closed_form:
        train_cfg = TrainConfig(steps=cfg.steps, batch_size=cfg.batch_size, lr_max=cfg.lr_max, lr_min=cfg.lr_min,
                                engine=cfg.engine, zero_stage=cfg.zero_stage)
        engine = make_engine(model, train_cfg)
        gen = torch.Generator().manual_seed(seed)
        for step in range(cfg.steps):
            engine.set_lr(cosine_lr(step, train_cfg))
            rows = torch.randint(len(train_h), (min(cfg.batch_size, len(train_h)),), generator=gen)
            tick = time.perf_counter()
            with autocast(dtype, str(device)):
                pred = engine.module(train_h[rows])
            loss = loss_fn(train_t[rows], pred.float())
            if not torch.isfinite(loss):
                metrics.update(status="failed", error=f"non-finite {cfg.loss} loss at step {step}")
                break
            engine.step(loss)
            train_s += time.perf_counter() - tick
            steps_done = step + 1
            curve.append({"step": steps_done, "loss": loss.item()})
            if on_step:
                on_step(steps_done, loss.item())
            if steps_done % cfg.eval_every == 0 or steps_done == cfg.steps:
                model.eval()
                err = local_error(runner, model.modules_dict(), eval_h, eval_t)
                model.train()
                curve[-1]["eval_nmse"] = err
                if err < best:
                    best, best_state, stale = err, copy.deepcopy(model.state_dict()), 0
                else:
                    stale += 1
                    if stale >= cfg.patience:
                        break
    model.load_state_dict(best_state)
    model.eval().requires_grad_(False)
    if not math.isfinite(best):
        metrics.update(status="failed", error=metrics["error"] or "non-finite local error")
    metrics.update(nmse=best, loss=loss_fn(eval_t, _predict(runner, model.modules_dict(), eval_h)).item(), steps=steps_done,
                   early_stop=0 < steps_done < cfg.steps and metrics["status"] == "ok" and not closed_form,
                   tokens=steps_done * min(cfg.batch_size, len(train_h)) * h.shape[1], train_s=train_s, curve=curve,
                   engine=cfg.engine, dtype=dtype, wall_s=time.perf_counter() - started)
    return model.modules_dict(), metrics
