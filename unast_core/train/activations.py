"""Stage 1, capture: the teacher's residual-stream state at every sublayer boundary, on disk.

Layout: `<dir>/boundary-NNN.safetensors` holds {"h": (N, T, H)} for boundary j = 0..2N (see
`Adapter.boundary_hooks`), `<dir>/meta.json` is written last and marks the capture complete. A consumer
reads only the boundary files it needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from unast_core.model.adapters import Adapter
from unast_core.train.losses import lm_loss_terms
from unast_core import integrity
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
    row_loss: list[float] = []  # summed next-token loss of each row, so a subset's mean loss is known
    try:
        for step, start in enumerate(range(0, len(tokens), batch_size)):
            ids = tokens[start:start + batch_size]
            logits = model(ids, use_cache=False).logits
            row_loss += [lm_loss_terms(logits[r:r + 1], ids[r:r + 1]).item() for r in range(len(ids))]
            if on_step:
                on_step(step + 1, -(-len(tokens) // batch_size))
    finally:
        for handle in handles:
            handle.remove()
    for j, parts in sorted(sink.items()):
        write_tensors(boundary_file(directory, j), {"h": torch.cat(parts).to(dtype)})
    meta = {"loss": sum(row_loss) / (len(tokens) * (tokens.shape[1] - 1)), "row_loss": row_loss,
            "boundaries": len(sink), "rows": len(tokens), "seq_len": tokens.shape[1]}
    write_json(Path(directory) / "meta.json", meta)
    return meta


def is_captured(directory: Path) -> bool:
    """A complete capture whose files all match their checksums (a corrupt one is reported and removed)."""
    meta = Path(directory) / "meta.json"
    if not integrity.intact(meta):
        return False
    stored = read_json(meta)
    boundaries = (boundary_file(directory, j) for j in range(stored.get("boundaries", 0)))
    return "row_loss" in stored and integrity.intact(*boundaries)


def mean_loss(meta: dict, rows: int | None) -> float:
    """The teacher's mean next-token loss over the first `rows` captured rows (all when None)."""
    n = min(rows or meta["rows"], meta["rows"])
    return sum(meta["row_loss"][:n]) / (n * (meta["seq_len"] - 1))


def load_meta(directory: Path) -> dict:
    return read_json(Path(directory) / "meta.json")


def load_boundary(directory: Path, j: int) -> torch.Tensor:
    """(N, T, H) residual state at boundary j."""
    return read_tensors(boundary_file(directory, j))["h"]
