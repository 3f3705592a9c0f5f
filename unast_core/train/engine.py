"""Training engines behind one small interface: plain PyTorch (CPU default) and DeepSpeed.

Both take the same `TrainConfig`; DeepSpeed's JSON config is built from it (ZeRO stage, clipping,
Adam). On CPU DeepSpeed runs over gloo with torch's Adam (no op JIT-compilation).
"""

from __future__ import annotations

import os
import socket
from typing import Any, Protocol

import torch
from torch import nn

from unast_core.config import TrainConfig
from unast_core.errors import UnastError


class Engine(Protocol):
    module: nn.Module

    def set_lr(self, lr: float) -> None: ...

    def step(self, loss: torch.Tensor) -> None: ...


class TorchEngine:
    def __init__(self, module: nn.Module, cfg: TrainConfig):
        self.module = module
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.params, lr=cfg.lr_max)
        self.grad_clip = cfg.grad_clip

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()


def deepspeed_config(cfg: TrainConfig, on_cuda: bool) -> dict[str, Any]:
    return {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": cfg.grad_clip,
        "optimizer": {"type": "Adam", "params": {"lr": cfg.lr_max, "torch_adam": not on_cuda}},
        "zero_optimization": {"stage": cfg.zero_stage},
        "bf16": {"enabled": bool(on_cuda and torch.cuda.is_bf16_supported())},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def _ensure_process_group(on_cuda: bool) -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        return
    with socket.socket() as s:  # a free local port for a world of one
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(port))
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    dist.init_process_group("nccl" if on_cuda else "gloo", rank=int(os.environ["RANK"]),
                            world_size=int(os.environ["WORLD_SIZE"]))


class DeepSpeedEngine:
    def __init__(self, module: nn.Module, cfg: TrainConfig):
        try:
            import deepspeed
        except ImportError:
            raise UnastError("engine 'deepspeed' needs the deepspeed package: pip install 'unast[gpu]', "
                             "or set the engine to torch") from None
        on_cuda = next(module.parameters()).is_cuda
        _ensure_process_group(on_cuda)
        params = [p for p in module.parameters() if p.requires_grad]
        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=module, model_parameters=params,
                                                                 config=deepspeed_config(cfg, on_cuda))
        self.module = self.engine

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)
        self.engine.step()


def make_engine(module: nn.Module, cfg: TrainConfig) -> Engine:
    return DeepSpeedEngine(module, cfg) if cfg.engine == "deepspeed" else TorchEngine(module, cfg)
