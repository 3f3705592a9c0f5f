"""UNAST core: plain PyTorch/transformers code. No orchestrator or tracker imports here."""
