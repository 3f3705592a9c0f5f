"""Stage 1, capture: the teacher's residual-stream state at every sublayer boundary, on disk.

Layout: `<dir>/boundary-NNN.safetensors` holds {"h": (N, T, H)} for boundary j = 0..2N (see
`Adapter.boundary_hooks`), `<dir>/meta.json` is written last and marks the capture complete. A consumer
reads only the boundary files it needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from unast_core.adapters import Adapter
from unast_core.evaluate import lm_loss_terms
from unast_core.store import read_json, read_tensors, write_json, write_tensors


def boundary_file(directory: Path, j: int) -> Path:
    return Path(directory) / f"boundary-{j:03d}.safetensors"


@torch.inference_mode()
def capture(model: torch.nn.Module, tokens: torch.Tensor, directory: Path, batch_size: int,
            dtype: torch.dtype = torch.float32, on_step: Callable[[int, int], None] | None = None) -> dict:
    """Run the teacher on tokens (N, T), write every boundary state, return {"loss", "boundaries", "rows"}."""
    adapter = Adapter(model)
    sink: dict[int, list[torch.Tensor]] = {}
    handles = adapter.boundary_hooks(sink)
    total, count = 0.0, 0
    try:
        for step, start in enumerate(range(0, len(tokens), batch_size)):
            ids = tokens[start:start + batch_size]
            total += lm_loss_terms(model(ids, use_cache=False).logits, ids).item()
            count += ids[:, 1:].numel()
            if on_step:
                on_step(step + 1, -(-len(tokens) // batch_size))
    finally:
        for handle in handles:
            handle.remove()
    for j, parts in sorted(sink.items()):
        write_tensors(boundary_file(directory, j), {"h": torch.cat(parts).to(dtype)})
    meta = {"loss": total / count, "boundaries": len(sink), "rows": len(tokens), "seq_len": tokens.shape[1]}
    write_json(Path(directory) / "meta.json", meta)
    return meta


def is_captured(directory: Path) -> bool:
    return (Path(directory) / "meta.json").exists()


def load_meta(directory: Path) -> dict:
    return read_json(Path(directory) / "meta.json")


def load_boundary(directory: Path, j: int) -> torch.Tensor:
    """(N, T, H) residual state at boundary j."""
    return read_tensors(boundary_file(directory, j))["h"]
