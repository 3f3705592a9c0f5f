"""GPU check for the nemotron-nas export: vLLM loads it and generates what the PyTorch student generates.

Builds a small random Llama (head dim 64, MLP widths in multiples of 256, as vLLM's kernels and ffn_mult
want), makes a student that uses every nemotron-nas feature (fewer KV heads, a skipped attention, a skipped
MLP, a narrower MLP), exports it with `export_nemotron`, loads it in vLLM (`DeciLMForCausalLM`) and compares
16 greedy tokens on 4 prompts with the PyTorch student's. Needs a CUDA GPU and vllm; run by
bench/gpu_check_vllm.sh. Prints one JSON line; exit 1 when the tokens differ beyond bf16 noise.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from unast_core.model.modeling_unast import apply_choices
from unast_core.model.teacher import byte_tokenizer
from unast_core.report.nemotron import export_nemotron

CHOICES = [
    {"attn": {"op": "teacher"}, "mlp": {"op": "mlp", "hidden": 512}},
    {"attn": {"op": "attention", "heads": 8, "kv_heads": 1, "head_dim": 64}, "mlp": {"op": "teacher"}},
    {"attn": {"op": "identity"}, "mlp": {"op": "teacher"}},
    {"attn": {"op": "teacher"}, "mlp": {"op": "identity"}},
]


def main() -> int:
    from vllm import LLM, SamplingParams

    tokenizer = byte_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=512, intermediate_size=1024, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512,
                         tie_word_embeddings=True, eos_token_id=len(tokenizer) - 1, pad_token_id=len(tokenizer) - 1)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    apply_choices(model, CHOICES)
    model.to(torch.bfloat16)
    out = export_nemotron(model, CHOICES, tokenizer, Path(tempfile.mkdtemp()) / "nemotron-nas")
    prompts = ["The quick brown fox", "def main():", "Once upon a time", "1, 2, 3, 4,"]
    llm = LLM(model=str(out), trust_remote_code=True, dtype="bfloat16", max_model_len=256, enforce_eager=True,
              gpu_memory_utilization=0.3)
    got = [o.outputs[0].token_ids for o in llm.generate(prompts, SamplingParams(temperature=0, max_tokens=16,
                                                                                 ignore_eos=True))]
    model.cuda()
    same = 0
    for prompt, tokens in zip(prompts, got):
        ids = tokenizer(prompt, return_tensors="pt").input_ids.cuda()
        ref = model.generate(ids, max_new_tokens=16, do_sample=False, eos_token_id=None)[0, ids.shape[1]:].tolist()
        same += sum(a == b for a, b in zip(ref, tokens))
    print(json.dumps({"export": str(out), "greedy_tokens_same": same, "of": 16 * len(prompts)}))
    return 0 if same >= 0.75 * 16 * len(prompts) else 1


if __name__ == "__main__":
    sys.exit(main())
