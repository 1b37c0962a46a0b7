"""The tiny default base: a byte-level BPE tokenizer and a Qwen2-architecture model, built here.

Nothing is downloaded. The tokenizer carries the special tokens and the chat template of
LLaMA-Factory's `qwen` template, so training prompts and evaluation prompts are the same text.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from harness.recipe import TinyBase

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# LLaMA-Factory 0.9.5's `qwen` template, as a Jinja chat template (same default system prompt).
DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n" + DEFAULT_SYSTEM + "<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """Byte-level BPE: every byte is in the alphabet, so any Chinese text encodes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 1 << 16
    return fast


def model_config(spec: TinyBase, tokenizer):
    """The Qwen2 config of the recipe's tiny shape, sized to the tokenizer."""
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size, num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_position_embeddings, tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None, torch_dtype="float32",
    )


def init_model(spec: TinyBase, tokenizer, seed: int):
    """A randomly initialised Qwen2 model of the recipe's shape (pre-training comes after)."""
    import torch
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(seed)
    return Qwen2ForCausalLM(model_config(spec, tokenizer))


def save(model, tokenizer, folder: Path) -> Path:
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def build_untrained(folder: Path, seed: int, spec: TinyBase = TinyBase(), tokenizer=None) -> Path:
    """A random-weight tiny model with a tokenizer trained on the synthetic corpus: the real
    architecture and files, for tests and benchmarks of stages that need some model."""
    from harness.data import synthetic

    if tokenizer is None:
        tokenizer = train_tokenizer((r["text"] for r in synthetic.corpus(4000, 0)), spec.vocab_size)
    return save(init_model(spec, tokenizer, seed), tokenizer, folder)
