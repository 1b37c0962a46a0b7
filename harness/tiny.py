"""Tiny bases built here: a byte-level BPE tokenizer and a Qwen2- or Llama-architecture model.

Nothing is downloaded. The tokenizer carries the special tokens of its architecture's chat
format and a chat template; the hub-cache tiny models (harness/tiny_hub.py) replace the template
with the real one their large counterpart ships, so a tiny model is read exactly as
`Qwen/Qwen2-7B-Instruct` or `meta-llama/Meta-Llama-3-8B-Instruct` would be.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Optional

from harness.recipe import TinyBase


# The pre-tokenizer regexes of the real tokenizers (Qwen2's tokenizer.json; Llama-3's differs in
# grouping digits by three). Newlines form their own pieces, so a chat prompt ending in "\n"
# or "\n\n" tokenizes the same alone as with its answer after it: lm-eval encodes the two
# joined, LLaMA-Factory and the scorer apart (tests/test_prompts.py).
_PIECES = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}%s"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PIECES = _PIECES % ""
LLAMA3_PIECES = _PIECES % "{1,3}"


@dataclass(frozen=True)
class ChatFormat:
    """The special tokens and chat template a tokenizer carries (bos/eos/pad as token text),
    and its pre-tokenizer's split pattern."""
    special_tokens: tuple[str, ...]
    eos: str
    chat_template: str
    pieces: str
    bos: Optional[str] = None
    pad: Optional[str] = None


# LLaMA-Factory 0.9.5's `qwen` template as a Jinja chat template (its default system prompt);
# the harness always sends the recipe's system prompt, so the default is never rendered.
QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
QWEN_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n" + QWEN_DEFAULT_SYSTEM + "<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# LLaMA-Factory's `llama3` template, as Llama-3-Instruct writes it.
LLAMA3_TEMPLATE = (
    "{% for message in messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)
FORMATS = {
    "qwen2": ChatFormat(("<|endoftext|>", "<|im_start|>", "<|im_end|>"), eos="<|im_end|>",
                        pad="<|endoftext|>", chat_template=QWEN_TEMPLATE, pieces=QWEN2_PIECES),
    "llama": ChatFormat(("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                         "<|end_header_id|>", "<|eot_id|>"), eos="<|eot_id|>",
                        bos="<|begin_of_text|>", chat_template=LLAMA3_TEMPLATE,
                        pieces=LLAMA3_PIECES),
}


def chat_format(architecture: str, chat_template: Optional[dict] = None) -> ChatFormat:
    """The architecture's format; `chat_template` (a hub tokenizer_config's chat_template,
    bos/eos/pad tokens) replaces the template and the token roles where given."""
    fmt = FORMATS[architecture]
    if chat_template:
        fmt = replace(fmt, chat_template=chat_template["chat_template"],
                      bos=chat_template.get("bos_token"), eos=chat_template["eos_token"],
                      pad=chat_template.get("pad_token"))
    return fmt


def train_tokenizer(texts: Iterable[str], vocab_size: int, fmt: ChatFormat = FORMATS["qwen2"]):
    """Byte-level BPE: every byte is in the alphabet, so any Chinese text encodes. A format
    with a BOS token prepends it on encode, as Llama-3's tokenizer does."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(fmt.pieces), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(fmt.special_tokens),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    if fmt.bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{fmt.bos} $A", pair=f"{fmt.bos} $A {fmt.bos} $B",
            special_tokens=[(fmt.bos, tok.token_to_id(fmt.bos))])
    roles = {t for t in (fmt.bos, fmt.eos, fmt.pad) if t}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=fmt.eos, bos_token=fmt.bos, pad_token=fmt.pad,
        additional_special_tokens=[t for t in fmt.special_tokens if t not in roles])
    fast.chat_template = fmt.chat_template
    fast.model_max_length = 1 << 16
    return fast


def model_config(spec: TinyBase, tokenizer):
    """The config of the recipe's tiny shape and architecture, sized to the tokenizer (padded
    to `vocab_multiple_of` rows)."""
    from transformers import LlamaConfig, Qwen2Config

    rows = -(-len(tokenizer) // spec.vocab_multiple_of) * spec.vocab_multiple_of
    common = dict(
        vocab_size=rows, hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size, num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_position_embeddings, tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, torch_dtype="float32")
    if spec.architecture == "llama":
        return LlamaConfig(**common, rope_theta=500000.0)  # Llama-3's rope base
    return Qwen2Config(**common)


def init_model(spec: TinyBase, tokenizer, seed: int):
    """A randomly initialised model of the recipe's shape (pre-training comes after)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(model_config(spec, tokenizer))


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
        tokenizer = train_tokenizer((r["text"] for r in synthetic.corpus(4000, 0)),
                                    spec.vocab_size, FORMATS[spec.architecture])
    return save(init_model(spec, tokenizer, seed), tokenizer, folder)


def prepare_init(spec: TinyBase, fmt: ChatFormat, texts: Iterable[str], folder: Path):
    """Config and tokenizer, no weights: what LLaMA-Factory's `train_from_scratch`
    pre-training starts from. Returns the tokenizer."""
    tokenizer = train_tokenizer(texts, spec.vocab_size, fmt)
    model_config(spec, tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return tokenizer
