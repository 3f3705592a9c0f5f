"""The sublayer view of a transformers causal LM (DESIGN.md "Sublayers and operators").

Sublayer `i` is `(block i // 2, "attn" if i is even else "mlp")`. Nothing outside this module and
`modeling_unast` knows the model family: the rest of the code swaps sublayers, counts their
parameters and runs the model from a cached residual state through an `Adapter`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from unast_core.errors import UnastError
from unast_core.model.modeling_unast import (
    FAMILIES,
    SUBLAYER_KINDS,
    build_operator,
    get_blocks,
)

SUPPORTED = "Llama, Mistral, Qwen2, Qwen3 (Llama family), Gemma, Gemma2, Gemma3 (Gemma family), GPT-2"


@dataclass(frozen=True)
class Sublayer:
    index: int   # position in the 2N-long sequence of sublayers
    block: int
    kind: str    # "attn" | "mlp"

    @property
    def name(self) -> str:
        return f"{self.block:02d}.{self.kind}"


class _Stop(Exception):
    """Raised by a hook to end a forward pass early (`Adapter.run_until`)."""


class _Passthrough(nn.Module):
    """Stands in for a decoder block whose output is already known (cached residual state)."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states


class Adapter:
    """Maps one model onto its sublayers. Methods mutate the model only inside context managers."""

    def __init__(self, model: nn.Module):
        model_type = model.config.model_type
        if model_type not in FAMILIES:
            raise UnastError(f"model family '{model_type}' is not supported; supported: {SUPPORTED}")
        self.model = model
        self.family = FAMILIES[model_type]
        self.blocks = get_blocks(model, self.family)
        self.sublayers = [Sublayer(2 * b + k, b, kind) for b in range(len(self.blocks))
                          for k, kind in enumerate(SUBLAYER_KINDS)]

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    def modules_of(self, sub: Sublayer) -> dict[str, nn.Module]:
        """The sublayer's own modules (operator and its norms): what a candidate replaces."""
        block = self.blocks[sub.block]
        names = [self.family[sub.kind], self.family[f"{sub.kind}_pre"], self.family[f"{sub.kind}_post"]]
        return {n: getattr(block, n) for n in names if n is not None}

    def sublayer_params(self, sub: Sublayer) -> int:
        return sum(p.numel() for m in self.modules_of(sub).values() for p in m.parameters())

    def total_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def build(self, index: int, spec: dict[str, Any], indices: dict[str, list[int]] | None = None) -> dict[str, nn.Module]:
        """The modules operator `spec` would put in place of sublayer `index` (not installed)."""
        sub = self.sublayers[index]
        built = build_operator(self.blocks[sub.block], self.family, sub.kind, spec, self.model.config, indices)
        like = next(self.model.parameters())  # new layers (linear) are made in fp32: match a bf16 model
        return {name: module.to(device=like.device, dtype=like.dtype) for name, module in built.items()}

    @contextlib.contextmanager
    def installed(self, modules: dict[int, dict[str, nn.Module]]) -> Iterator[nn.Module]:
        """Temporarily put prebuilt modules `{sublayer_index: {attribute: module}}` in place."""
        saved = []
        try:
            for index, replacement in modules.items():
                block = self.blocks[self.sublayers[index].block]
                saved.append((block, {name: getattr(block, name) for name in replacement}))
                for name, module in replacement.items():
                    setattr(block, name, module)
            yield self.model
        finally:
            for block, originals in reversed(saved):
                for name, module in originals.items():
                    setattr(block, name, module)

    @contextlib.contextmanager
    def swapped(self, choices: dict[int, dict[str, Any]]) -> Iterator[nn.Module]:
        """Temporarily replace sublayers: `choices = {sublayer_index: {"op": ...}}` (structure only:
        downsized operators hold the teacher's first heads / channels)."""
        with self.installed({index: self.build(index, spec) for index, spec in choices.items()}) as model:
            yield model

    @contextlib.contextmanager
    def start_at(self, block: int, hidden: torch.Tensor) -> Iterator[nn.Module]:
        """Run the model from the residual state `hidden` (B, T, H) entering `block`.

        Blocks before `block` become pass-throughs and a pre-hook feeds `hidden` to `block`, so a forward
        on the same input_ids costs only the embedding plus blocks `block..N-1` (the scoring shortcut).
        """
        originals = [self.blocks[b] for b in range(block)]

        def feed(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            if args:
                return (hidden,) + tuple(args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden}

        handle = self.blocks[block].register_forward_pre_hook(feed, with_kwargs=True) if block < self.n_blocks else None
        try:
            for b in range(block):
                self.blocks[b] = _Passthrough()
            yield self.model
        finally:
            for b, module in enumerate(originals):
                self.blocks[b] = module
            if handle is not None:
                handle.remove()

    def run_until(self, block: int, hidden: torch.Tensor, module: nn.Module, output: bool = False) -> torch.Tensor:
        """Run the model from the residual state `hidden` entering `block` and stop at `module`: return the
        hidden states it receives (or, with `output`, returns). Nothing after that point runs."""
        captured: dict[str, torch.Tensor] = {}

        def on_input(mod: nn.Module, args: tuple, kwargs: dict) -> None:
            captured["h"] = args[0] if args else kwargs["hidden_states"]
            raise _Stop

        def on_output(mod: nn.Module, args: tuple, out: Any) -> None:
            captured["h"] = out[0] if isinstance(out, tuple) else out
            raise _Stop

        handle = module.register_forward_hook(on_output) if output else \
            module.register_forward_pre_hook(on_input, with_kwargs=True)
        ids = torch.zeros(hidden.shape[:2], dtype=torch.long, device=hidden.device)  # positions only
        try:
            with self.start_at(block, hidden):
                self.model(ids, use_cache=False)
        except _Stop:
            pass
        finally:
            handle.remove()
        return captured["h"]

    def boundary_hooks(self, sink: dict[int, list[torch.Tensor]]) -> list[torch.utils.hooks.RemovableHandle]:
        """Record the residual state at every sublayer boundary j = 0..2N into `sink[j]`.

        j = 2b is the input of block b, j = 2b + 1 the state between its attention and MLP sublayers,
        and j = 2N the output of the last block (before the final norm).
        """
        handles = []
        for b, block in enumerate(self.blocks):
            handles.append(block.register_forward_pre_hook(_recorder(sink, 2 * b), with_kwargs=True))
            mlp_entry = getattr(block, self.family["mlp_pre"])
            handles.append(mlp_entry.register_forward_pre_hook(_recorder(sink, 2 * b + 1), with_kwargs=True))
        handles.append(self.blocks[-1].register_forward_hook(_output_recorder(sink, 2 * len(self.blocks))))
        return handles

    def max_positions(self) -> int | None:
        cfg = self.model.config
        return getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)


def _recorder(sink: dict[int, list[torch.Tensor]], j: int):
    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        sink.setdefault(j, []).append(hidden.detach())
    return hook


def _output_recorder(sink: dict[int, list[torch.Tensor]], j: int):
    def hook(module: nn.Module, args: tuple, output: Any) -> None:
        hidden = output[0] if isinstance(output, tuple) else output
        sink.setdefault(j, []).append(hidden.detach())
    return hook


def check_seq_len(adapter: Adapter, seq_len: int, what: str) -> None:
    limit = adapter.max_positions()
    if limit is not None and seq_len > limit:
        raise UnastError(f"{what}={seq_len} is longer than the model supports ({limit} positions); lower it")
