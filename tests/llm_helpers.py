"""A tiny random-weight Llama with a locally trained byte-level tokenizer and a chat template (no hub)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL = ["<|pad|>", "<|bos|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
TRAIN_TEXT = [
    "What waveform features are most likely to be present in ECGs with these symptoms?",
    'Answer with a JSON list: ["prolonged pr interval", "st elevation in v1-v3", "wide qrs complex"]',
    "sinus rhythm. left bundle branch block. atrial fibrillation with rapid ventricular response.",
]
VLLM_VENV = Path(__file__).resolve().parents[1] / ".venv-vllm"


def build_tiny_llama(out: str | os.PathLike, seed: int = 0, head_dim: int = 32) -> Path:
    """Save a 2-layer Llama (hidden 64, head size ``head_dim``) and its tokenizer into ``out``; return it."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(out)
    if (out / "config.json").is_file():
        return out
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(TRAIN_TEXT, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|end|>", pad_token="<|pad|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    heads = 64 // head_dim
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=head_dim,
        max_position_embeddings=1024,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    fast.save_pretrained(out)
    return out


def vllm_python() -> Path | None:
    """The second venv's python if vllm is installed in it, else None (cheap: no import)."""
    python = VLLM_VENV / "bin" / "python"
    installed = any(VLLM_VENV.glob("lib/python3*/site-packages/vllm/__init__.py"))
    return python if python.is_file() and installed else None


def vllm_env(tmp: Path) -> dict[str, str]:
    """Environment for a CPU vLLM run in a test: single process, offline, small KV cache, cache dir in ``tmp``."""
    env = dict(os.environ)
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "VIRTUAL_ENV", "PYTHONPATH"):
        env.pop(var, None)
    env.update(
        VLLM_ENABLE_V1_MULTIPROCESSING="0",
        VLLM_NO_USAGE_STATS="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        VLLM_CACHE_ROOT=str(tmp / "vllm-cache"),
        VLLM_CPU_OMP_THREADS_BIND="nobind",
        HF_HOME=str(tmp / "hf-home"),
    )
    env["PATH"] = f"{VLLM_VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


if __name__ == "__main__":
    print(build_tiny_llama(sys.argv[1]))
