"""The MLLM side of ThinkGen: prompt templates, instruction features for the DiT, thinking, and chat.

Reference semantics (docs: shared/reference/reference-code.md §1.2-1.5, §8):

* Prompt = chat template of [system: SYSTEM_PROMPT, user: vision placeholders + instruction] with
  add_generation_prompt=False, then a raw suffix: think `<|im_start|>assistant\\n<think>\\n`, no-think
  `<|im_start|>assistant\\n<think>\\n</think>{instruction}` (no newline, no `<|im_end|>`).
* DiT features = cat(hidden[-2], hidden[-1]) where hidden[-2] is the RAW residual output of the second-to-last
  decoder layer and hidden[-1] the output of the final RMSNorm (transformers 4.57 `output_hidden_states`).
  We capture exactly those two tensors with forward hooks (decoder layer n-2 and the final norm), so the
  semantics do not depend on how a transformers version fills `output_hidden_states`. (5.24 verified identical:
  its hidden_states[-2] is the hooked layer output, hidden_states[-1] is replaced by the post-norm
  last_hidden_state; see tests/test_mllm.py::test_feature_semantics.)
* Only tokens after the first `</think>` go to the DiT. Ids are read from the tokenizer, never hard-coded.

Deliberate deviations from the reference code, all robustness fixes that leave normal outputs unchanged:
the `</think>` search starts at the assistant turn (a literal `</think>` inside the user's text cannot cut early),
a missing `</think>` never silently feeds the whole sequence (see `on_missing_think_end`), the DiT-feature
forward uses explicit position ids so left padding gives the same features as batch size 1, and batch size > 1
is supported everywhere.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

from thinkgen.errors import CheckpointError, ConfigError, GenerationError, InvalidInputError
from thinkgen.processor import ThinkGenProcessor
from thinkgen.tokenization import (IM_END, IMAGE_PAD, PAD_TOKEN, THINK_END, THINK_START, VIDEO_PAD, VISION_END,
                                   VISION_START, check_special_tokens)

# Byte-for-byte the reference SYSPROMPT (reference-code.md §1.2); it ends with a newline.
SYSTEM_PROMPT = (
    "You are a helpful, general-purpose AI assistant with the ability to generate images and understand images.\n"
    "\n"
    "Your primary goal is to assist the user effectively. When generating/edit an image, provide a clear, "
    "one-sentence caption or edit instruction that accurately describes the requested image.\n"
)

# OmniGen2's default negative prompt, which ThinkGen_Chat uses (encoded through the no-think template).
DEFAULT_NEGATIVE_PROMPT = (
    "(((deformed))), blurry, over saturation, bad anatomy, disfigured, poorly drawn face, mutation, mutated, "
    "(extra_limb), (ugly), (poorly drawn hands), fused fingers, messy drawing, broken legs censor, censored, "
    "censor_bar"
)

VISION_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"

PROMPT_MODES = ("think", "nothink", "auto", "negative", "chat")
MISSING_THINK_END_POLICIES = ("force_close", "error")
FORCE_CLOSE_TEXT = THINK_END + "\n\n"


# ----------------------------------------------------------------------------------------------------- templates
def _check_mode(mode: str, allowed=PROMPT_MODES) -> None:
    if mode not in allowed:
        raise InvalidInputError(f"unknown prompt mode {mode!r}; allowed: {', '.join(allowed)}")


def prompt_parts(tokenizer, instruction: str, num_images: int = 0, mode: str = "nothink") -> tuple[str, str]:
    """(head, assistant suffix) of `build_prompt`: head = rendered [system, user] turns, suffix = the raw
    assistant opening. Splitting here lets callers locate the assistant turn without searching the text."""
    _check_mode(mode)
    if not isinstance(instruction, str):
        raise InvalidInputError(f"instruction must be a str, got {type(instruction).__name__}")
    if num_images < 0:
        raise InvalidInputError(f"num_images must be >= 0, got {num_images}")
    instr = VISION_PLACEHOLDER * num_images + instruction
    messages = [{"role": "user", "content": instr}]
    if mode != "chat":
        messages.insert(0, {"role": "system", "content": SYSTEM_PROMPT})
    head = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    if mode == "think":
        return head, "<|im_start|>assistant\n<think>\n"
    if mode in ("auto", "chat"):
        return head, "<|im_start|>assistant\n"
    return head, "<|im_start|>assistant\n<think>\n</think>" + instr


def build_prompt(tokenizer, instruction: str, num_images: int = 0, mode: str = "nothink") -> str:
    """The exact ThinkGen prompt string for one instruction.

    mode: "think"    -> ...<|im_start|>assistant\\n<think>\\n             (the model writes its thoughts)
          "nothink"  -> ...<|im_start|>assistant\\n<think>\\n</think>{instr}  (one forward, no decoding)
          "negative" -> same as "nothink" (the reference encodes the negative prompt this way, with num_images=0)
          "auto"     -> ...<|im_start|>assistant\\n                         (the model decides whether to open <think>)
          "chat"     -> as "auto" without the system turn: the understanding / chat prompt of ``ThinkGenMLLM.chat``
    where ... = tokenizer.apply_chat_template([system: SYSTEM_PROMPT, user: {instr}], add_generation_prompt=False)
    and {instr} = one VISION_PLACEHOLDER per input image + instruction (also after </think>, as in the reference).
    Unknown mode -> InvalidInputError.
    """
    head, suffix = prompt_parts(tokenizer, instruction, num_images, mode)
    return head + suffix


def find_answer_start(ids, think_end_id: int, start: int = 0) -> int | None:
    """Index just after the first `think_end_id` at or after `start`, or None when there is none."""
    ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
    for i in range(max(start, 0), len(ids)):
        if ids[i] == think_end_id:
            return i + 1
    return None


def generated_answer_start(generated, think_start_id: int, think_end_id: int, mode: str) -> int | None:
    """Where the answer starts inside the GENERATED tokens (think/auto modes).

    After the first </think> if there is one. Otherwise: auto / chat mode whose output does not open with <think>
    answered directly -> 0 (the whole answer); anything else -> None (a thought that never closed).
    """
    gen = generated.tolist() if isinstance(generated, Tensor) else list(generated)
    cut = find_answer_start(gen, think_end_id)
    if cut is not None:
        return cut
    if mode in ("auto", "chat") and (not gen or gen[0] != think_start_id):
        return 0
    return None


# ----------------------------------------------------------------------------------------------------- hand-off
@dataclass
class InstructionFeatures:
    """What the MLLM hands to the DiT (docs/design.md)."""

    features: Tensor                 # (B, L, 2*H) right-padded, cat(hidden[-2], hidden[-1]) of tokens after </think>
    mask: Tensor                     # (B, L) bool, True = valid token
    thoughts: list[str] = field(default_factory=list)      # decoded generation (think span + answer); "" no-think
    instructions: list[str] = field(default_factory=list)  # decoded answer after </think>
    finished: list[bool] = field(default_factory=list)     # False when think/answer hit a budget
    # Extension (not in design.md): think() fills the generated token ids per sample (stop token included),
    # for RL log-probs and tests; [] from encode_instructions.
    generated_ids: list[list[int]] = field(default_factory=list)

    def __len__(self) -> int:
        return self.features.shape[0]

    def to(self, device=None, dtype=None) -> "InstructionFeatures":
        return InstructionFeatures(self.features.to(device=device, dtype=dtype), self.mask.to(device=device),
                                   list(self.thoughts), list(self.instructions), list(self.finished),
                                   [list(x) for x in self.generated_ids])


def _gather_spans(feats: Tensor, starts: list[int], ends: list[int]) -> tuple[Tensor, Tensor]:
    """Right-padded (B, L, D) copy of feats[b, starts[b]:ends[b]] and its bool mask."""
    B, _, D = feats.shape
    lengths = [max(e - s, 0) for s, e in zip(starts, ends)]
    L = max(lengths, default=0)
    out = feats.new_zeros(B, L, D)
    mask = torch.zeros(B, L, dtype=torch.bool, device=feats.device)
    for b, (s, n) in enumerate(zip(starts, lengths)):
        out[b, :n] = feats[b, s:s + n]
        mask[b, :n] = True
    return out, mask


# ----------------------------------------------------------------------------------------------------- decoding
class _ThinkState:
    """Per-sample think/answer state machine that runs inside HF `generate` (batched, left padded).

    As a logits processor (before each token is chosen) it forbids the stop tokens inside a thought, forces the
    force-close tokens, and applies temperature / top-k / top-p itself (so that masking and forcing happen before
    any filtering and a row can never end up all -inf). As a stopping criterion (after each token is appended)
    it advances the state and stops a sample at its stop token, at its answer budget, or (policy "error") at its
    think budget.
    """

    UNDECIDED, THINKING, ANSWERING, DONE = 0, 1, 2, 3

    def __init__(self, batch: int, prompt_len: int, mode: str | list[str], ids: dict, *, max_think_tokens: int,
                 max_answer_tokens: int, policy: str, close_ids: list[int], do_sample: bool,
                 temperature: float, top_p: float, top_k: int,
                 generators: list[torch.Generator] | None = None, progress=None):
        self.prompt_len, self.mode = prompt_len, mode
        self.think_start, self.think_end = ids[THINK_START], ids[THINK_END]
        self.stop_ids = [ids[IM_END], ids[PAD_TOKEN]]
        # vision placeholders are never generated: the feature pass over prompt + generation would read a generated
        # <|image_pad|> as an image slot without pixels (an untrained model can emit one)
        self.never_ids = [ids[IMAGE_PAD], ids[VIDEO_PAD], ids[VISION_START], ids[VISION_END]]
        self.max_think, self.max_answer, self.policy = max_think_tokens, max_answer_tokens, policy
        self.close_ids = close_ids
        self.do_sample, self.temperature, self.top_p, self.top_k = do_sample, temperature, top_p, top_k
        self.generators = generators             # one per sample: sampling independent of the batch around it
        self.progress = progress                 # a tqdm bar (or None), one tick per decoding step
        modes = [mode] * batch if isinstance(mode, str) else list(mode)
        self.phase = [self.THINKING if m == "think" else self.UNDECIDED for m in modes]
        self.n_think = [0] * batch
        self.n_answer = [0] * batch
        self.n_gen = [0] * batch                 # generated tokens that belong to the sample (incl. its stop token)
        self.queue: list[list[int]] = [[] for _ in range(batch)]
        self.forced_close = [False] * batch
        self.truncated = [False] * batch
        self.think_overflow = [False] * batch    # policy "error": stopped at the think budget

    # -- logits processor (called before each token is chosen)
    def _process(self, scores: Tensor) -> Tensor:
        scores = scores.clone()
        scores[:, torch.tensor(self.never_ids, device=scores.device)] = float("-inf")
        thinking = [b for b, p in enumerate(self.phase) if p == self.THINKING and not self.queue[b]]
        if thinking:
            rows = torch.tensor(thinking, device=scores.device)
            scores[rows[:, None], torch.tensor(self.stop_ids, device=scores.device)[None, :]] = float("-inf")
        if self.do_sample:
            scores = scores / self.temperature
            if self.top_k > 0:
                k = min(self.top_k, scores.shape[-1])
                kth = torch.topk(scores, k, dim=-1).values[:, -1:]
                scores = scores.masked_fill(scores < kth, float("-inf"))
            if self.top_p < 1.0:
                sorted_scores, order = torch.sort(scores, descending=True, dim=-1)
                probs = sorted_scores.softmax(-1)
                drop_sorted = probs.cumsum(-1) - probs > self.top_p   # keeps at least the top token
                drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
                scores = scores.masked_fill(drop, float("-inf"))
        for b, q in enumerate(self.queue):
            if self.phase[b] == self.DONE:
                continue
            if q:
                choice = q[0]
            elif self.do_sample and self.generators is not None:
                # Draw from this sample's own generator, then hand HF a one-hot row (its multinomial can only
                # return that token), so a sample's thoughts do not depend on which batch it is in.
                choice = int(torch.multinomial(scores[b].softmax(-1), 1, generator=self.generators[b]))
            else:
                continue
            scores[b] = float("-inf")
            scores[b, choice] = 0.0
        return scores

    # -- stopping criterion (called after each token is appended)
    def _stop(self, input_ids) -> Tensor:
        j = input_ids.shape[1] - self.prompt_len - 1            # index of the token just appended
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if self.progress is not None:
            self.progress.update(1)
        last = input_ids[:, -1].tolist()                         # one device sync per step
        for b, tok in enumerate(last):
            if self.phase[b] == self.DONE:
                done[b] = True
                continue
            self.n_gen[b] = j + 1
            if self.queue[b]:
                self.queue[b].pop(0)
            phase = self.phase[b]
            if phase == self.UNDECIDED:
                if tok == self.think_start:
                    self.phase[b] = self.THINKING
                elif tok == self.think_end:
                    self.phase[b] = self.ANSWERING
                elif tok in self.stop_ids:
                    self.phase[b] = self.DONE
                else:                                            # answered directly
                    self.phase[b] = self.ANSWERING
                    self._count_answer(b)
            elif phase == self.THINKING:
                if tok == self.think_end:
                    self.phase[b] = self.ANSWERING
                else:
                    self.n_think[b] += 1
                    if self.n_think[b] >= self.max_think and not self.queue[b]:
                        if self.policy == "force_close":
                            self.queue[b] = list(self.close_ids)
                            self.forced_close[b] = True
                        else:
                            self.think_overflow[b] = True
                            self.phase[b] = self.DONE
            elif phase == self.ANSWERING:
                if tok in self.stop_ids and not self.queue[b]:
                    self.phase[b] = self.DONE
                else:
                    self._count_answer(b)
            done[b] = self.phase[b] == self.DONE
        return done

    def _count_answer(self, b: int) -> None:
        self.n_answer[b] += 1
        if self.n_answer[b] >= self.max_answer and not self.queue[b]:
            self.truncated[b] = True
            self.phase[b] = self.DONE


class _ProcessorView(LogitsProcessor):
    """Hands HF generate's logits-processor calls to the shared _ThinkState."""

    def __init__(self, state: _ThinkState):
        self.state = state

    def __call__(self, input_ids, scores):
        return self.state._process(scores)


class _CriterionView(StoppingCriteria):
    """Hands HF generate's stopping-criteria calls to the shared _ThinkState."""

    def __init__(self, state: _ThinkState):
        self.state = state

    def __call__(self, input_ids, scores, **kwargs):
        return self.state._stop(input_ids)


def _sample_generators(seed, generator, batch: int, device: torch.device) -> list[torch.Generator] | None:
    """One torch.Generator per sample (on `device`), or None to sample from the global RNG.

    seed: an int (every sample uses that seed) or one int per sample. generator: one Generator per sample, or a
    single Generator from which one seed per sample is drawn.
    """
    if seed is not None and generator is not None:
        raise InvalidInputError("pass seed or generator, not both")
    if seed is None and generator is None:
        return None
    if generator is not None:
        if isinstance(generator, torch.Generator):
            seed = [int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
                    for _ in range(batch)]
        else:
            gens = list(generator)
            if len(gens) != batch:
                raise InvalidInputError(f"got {len(gens)} generators for {batch} instructions")
            return gens
    seeds = [seed] * batch if isinstance(seed, int) else list(seed)
    if len(seeds) != batch or any(isinstance(x, bool) or not isinstance(x, int) for x in seeds):
        raise InvalidInputError(f"seed must be an int or one int per instruction ({batch}), got {seed!r}")
    return [torch.Generator(device=device).manual_seed(int(x)) for x in seeds]


@contextmanager
def _keep_rng(device: torch.device, active: bool):
    """Restore the global RNG afterwards (HF's multinomial still draws from it on the one-hot rows)."""
    if not active:
        yield
        return
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        yield


def synced_generation(model: torch.nn.Module) -> bool:
    """True when ``model`` is FSDP2-sharded across several processes: ``generate`` must then keep every rank
    decoding until all ranks are done (HF ``synced_gpus``), because each forward all-gathers the sharded weights
    and a rank that stopped early would leave the others waiting in a collective."""
    import torch.distributed as tdist

    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, FSDPModule) and tdist.is_available() and tdist.is_initialized() \
        and tdist.get_world_size() > 1


@contextmanager
def capture_features(model: torch.nn.Module):
    """Forward hooks that record the DiT features of the next forward of ``model`` (a Qwen3-VL for conditional
    generation, possibly wrapped): yields a dict whose ``"features"`` is cat(raw output of decoder layer n-2, final
    RMSNorm output), (B, T, 2H), once that forward has run. Gradients flow if the forward records them."""
    inner = model.module if hasattr(model, "module") and not hasattr(model, "model") else model
    lm = inner.model.language_model
    captured: dict[str, Tensor] = {}

    def grab_layer(_m, _a, out):
        captured["prev"] = out[0] if isinstance(out, tuple) else out

    def grab_norm(_m, _a, out):
        captured["last"] = out
        captured["features"] = torch.cat([captured["prev"], out], dim=-1)

    handles = [lm.layers[-2].register_forward_hook(grab_layer), lm.norm.register_forward_hook(grab_norm)]
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()


def split_thoughts(text: str) -> tuple[str, str]:
    """(thoughts, answer) of a decoded reply: the answer is what follows the last ``</think>`` (the whole text when
    the model did not think)."""
    if THINK_END not in text:
        return "", text.strip()
    head, _, tail = text.rpartition(THINK_END)
    return head.replace(THINK_START, "").strip(), tail.strip()


# ----------------------------------------------------------------------------------------------------- tiny model
def _mrope_section(head_dim: int) -> list[int]:
    half = head_dim // 2
    hw = max(1, (half * 5) // 16)            # 64 -> [24, 20, 20] like Qwen3-VL; 4 -> [2, 1, 1]
    return [half - 2 * hw, hw, hw]


def build_tiny_mllm(tokenizer, hidden_size: int = 32, num_layers: int = 2, *, num_heads: int = 4,
                    num_kv_heads: int = 2, intermediate_size: int | None = None, vision_depth: int = 1,
                    vision_hidden_size: int = 16, vision_heads: int = 2, initializer_range: float = 0.02,
                    seed: int = 0, dtype: torch.dtype = torch.float32) -> Qwen3VLForConditionalGeneration:
    """A random-init Qwen3-VL sized for tests / the nano model, wired to `tokenizer`'s special-token ids.

    Rules (ecosystem.md §2.1): mrope_section sums to head_dim // 2; vision out_hidden_size == text hidden size;
    num_position_embeddings is a square; the image/video/vision ids come from the tokenizer.
    """
    if hidden_size % num_heads or (hidden_size // num_heads) % 2 or hidden_size // num_heads < 6:
        raise ConfigError(f"hidden_size/num_heads must be an even head_dim >= 6, got {hidden_size}/{num_heads}")
    if num_heads % num_kv_heads:
        raise ConfigError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
    if num_layers < 2:
        raise ConfigError(f"num_layers must be >= 2 (features use the last two layers), got {num_layers}")
    if vision_hidden_size % vision_heads or (vision_hidden_size // vision_heads) % 4:
        raise ConfigError(f"vision_hidden_size/vision_heads must be a multiple of 4, got "
                          f"{vision_hidden_size}/{vision_heads}")
    ids = check_special_tokens(tokenizer)
    head_dim = hidden_size // num_heads
    cfg = Qwen3VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size or 2 * hidden_size,
            num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
            head_dim=head_dim, max_position_embeddings=8192, initializer_range=initializer_range,
            rope_parameters=dict(rope_type="default", rope_theta=5e5, mrope_section=_mrope_section(head_dim),
                                 mrope_interleaved=True),
        ),
        vision_config=dict(
            depth=vision_depth, hidden_size=vision_hidden_size, intermediate_size=2 * vision_hidden_size,
            num_heads=vision_heads, out_hidden_size=hidden_size, patch_size=16, spatial_merge_size=2,
            temporal_patch_size=2, num_position_embeddings=64, deepstack_visual_indexes=[0],
            initializer_range=initializer_range,
        ),
        image_token_id=ids[IMAGE_PAD], video_token_id=ids[VIDEO_PAD],
        vision_start_token_id=ids[VISION_START], vision_end_token_id=ids[VISION_END],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3VLForConditionalGeneration(cfg)
    gc = model.generation_config
    gc.eos_token_id, gc.pad_token_id, gc.bos_token_id = ids[IM_END], ids[PAD_TOKEN], None
    return model.to(dtype).eval()


# ----------------------------------------------------------------------------------------------------- wrapper
def _as_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise InvalidInputError(f"unknown dtype {dtype!r}; allowed: {', '.join(table)}")
    return table[dtype]


class ThinkGenMLLM:
    """Qwen3-VL + ThinkGenProcessor: instruction features for the DiT, thinking, and chat."""

    def __init__(self, model: Qwen3VLForConditionalGeneration, processor: ThinkGenProcessor):
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.ids = processor.special_ids
        cfg = model.config
        for name, tok in (("image_token_id", IMAGE_PAD), ("video_token_id", VIDEO_PAD),
                          ("vision_start_token_id", VISION_START), ("vision_end_token_id", VISION_END)):
            if getattr(cfg, name, self.ids[tok]) != self.ids[tok]:
                raise CheckpointError(f"model config {name}={getattr(cfg, name)} but the tokenizer has {tok} at "
                                      f"{self.ids[tok]}; the MLLM and processor folders do not belong together")
        vocab = cfg.text_config.vocab_size
        if max(self.ids.values()) >= vocab:
            raise CheckpointError(f"tokenizer ids reach {max(self.ids.values())} but the model vocab_size is {vocab}")
        if cfg.text_config.num_hidden_layers < 2:
            raise CheckpointError("the MLLM needs >= 2 decoder layers (features use the last two)")

    # -- loading / saving
    @classmethod
    def from_pretrained(cls, mllm_dir: str | os.PathLike, processor_dir: str | os.PathLike | None = None,
                        dtype: torch.dtype | str = torch.float32, device: str | torch.device = "cpu") -> "ThinkGenMLLM":
        """Load `mllm/` (Qwen3-VL weights) and `processor/` (tokenizer + preprocessor_config.json) folders."""
        mllm_dir = Path(mllm_dir)
        if not (mllm_dir / "config.json").is_file():
            raise CheckpointError(f"{str(mllm_dir)!r} has no config.json; expected a Qwen3-VL model folder")
        processor = ThinkGenProcessor.from_pretrained(processor_dir if processor_dir is not None else mllm_dir)
        try:
            model = Qwen3VLForConditionalGeneration.from_pretrained(str(mllm_dir), dtype=_as_dtype(dtype),
                                                                    local_files_only=True)
        except Exception as e:  # noqa: BLE001 - re-raised with the folder named
            raise CheckpointError(f"cannot load the Qwen3-VL model from {str(mllm_dir)!r}: {e}") from e
        return cls(model.to(device).eval(), processor)

    def save_pretrained(self, mllm_dir: str | os.PathLike, processor_dir: str | os.PathLike | None = None) -> None:
        self.model.save_pretrained(str(mllm_dir))
        self.processor.save_pretrained(processor_dir if processor_dir is not None else mllm_dir)

    def to(self, device=None, dtype=None) -> "ThinkGenMLLM":
        self.model.to(device=device, dtype=dtype)
        return self

    # -- properties
    @property
    def hidden_size(self) -> int:
        return self.model.config.text_config.hidden_size

    @property
    def feature_dim(self) -> int:
        return 2 * self.hidden_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # -- features
    def forward_features(self, batch: dict[str, Tensor], model: torch.nn.Module | None = None,
                         return_logits: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """(B, T, 2H) = cat(raw output of decoder layer n-2, final-norm output) for every position.

        batch: processor output (input_ids, attention_mask, optional pixel_values / image_grid_thw /
        mm_token_type_ids). Without images we pass position ids from the attention mask, so left padding gives the
        same positions as no padding. (transformers 5.24 would otherwise use arange over the padded row; RoPE is
        invariant to a uniform shift, so that only changes rounding, but explicit positions keep it exact and
        version-independent.) With images the model's own 3-D rope index, which reads the attention mask, is used.
        Gradients flow if the caller enables them (encode_instructions/think run under no_grad).
        ``model``: run this module instead of ``self.model`` (a DDP / FSDP2-wrapped policy, or a reference copy);
        ``return_logits``: also return the (B, 1, V) last-position logits (a loss that adds ``0 * logits.sum()``
        keeps the LM head in the graph, as DDP without ``find_unused_parameters`` requires).
        """
        model = self.model if model is None else model
        batch = {k: v.to(self.device) for k, v in batch.items()}
        mask = batch["attention_mask"]
        kwargs = dict(batch)
        if "image_grid_thw" not in batch:
            kwargs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
        if "pixel_values" in kwargs:
            kwargs["pixel_values"] = kwargs["pixel_values"].to(self.dtype)
        with capture_features(model) as captured:
            # through the top-level module (an FSDP2-sharded model gathers its root weights -- embeddings, vision
            # tower, final norm -- only there); logits for one position only, the features come from the hooks
            out = model(**kwargs, use_cache=False, logits_to_keep=1)
        return (captured["features"], out.logits) if return_logits else captured["features"]

    @torch.no_grad()
    def encode_instructions(self, instructions: list[str], num_images: list[int] | None = None,
                            mode: str = "nothink", *, padding_side: str = "right",
                            max_length: int | None = None) -> InstructionFeatures:
        """No-think features: ONE batched forward over the no-think prompts, tokens after </think>.

        Like the reference this is the tokenizer-only path: the MLLM gets no pixels; with num_images[i] > 0 the
        instruction just carries `<|image_pad|>` placeholder tokens (the DiT sees the images through the VAE).
        mode: "nothink" or "negative". An empty instruction gives zero valid tokens.
        """
        batch, starts, ends = self.nothink_batch(instructions, num_images, mode, padding_side=padding_side,
                                                 max_length=max_length)
        feats = self.forward_features(batch)
        features, fmask = _gather_spans(feats, starts, ends)
        answers = [self.tokenizer.decode(batch["input_ids"][b, s:e], skip_special_tokens=True)
                   for b, (s, e) in enumerate(zip(starts, ends))]
        n = len(starts)
        return InstructionFeatures(features, fmask, [""] * n, answers, [True] * n)

    def nothink_features(self, instructions: list[str], num_images: list[int] | None = None, *,
                         model: torch.nn.Module | None = None, return_logits: bool = False):
        """(features (B, L, 2H), mask (B, L)) of the tokens after ``</think>`` of the no-think prompts -- what
        ``encode_instructions`` hands the DiT -- computed by ``model`` (default ``self.model``); gradients flow if the
        caller enables them. With ``return_logits`` also the last-position logits (see ``forward_features``)."""
        batch, starts, ends = self.nothink_batch(instructions, num_images)
        out = self.forward_features(batch, model=model, return_logits=return_logits)
        feats, logits = out if return_logits else (out, None)
        features, mask = _gather_spans(feats, starts, ends)
        return (features, mask, logits) if return_logits else (features, mask)

    def nothink_batch(self, instructions: list[str], num_images: list[int] | None = None, mode: str = "nothink", *,
                      padding_side: str = "right", max_length: int | None = None
                      ) -> tuple[dict[str, Tensor], list[int], list[int]]:
        """The tokenizer-only no-think batch of ``encode_instructions`` and, per row, the [start, end) span of the
        tokens after ``</think>`` (the positions whose features the DiT reads)."""
        _check_mode(mode, ("nothink", "negative"))
        instructions = self._check_texts(instructions)
        if num_images is None:
            num_images = [0] * len(instructions)
        if len(num_images) != len(instructions):
            raise InvalidInputError(f"got {len(instructions)} instructions but {len(num_images)} num_images")
        prompts = [build_prompt(self.tokenizer, s, n, mode) for s, n in zip(instructions, num_images)]
        # The answer starts after the first </think> of the assistant turn, i.e. after the prompt's own </think>.
        heads = [prompt_parts(self.tokenizer, s, n, mode)[0] for s, n in zip(instructions, num_images)]
        head_lens = [len(self.tokenizer.encode(h, add_special_tokens=False)) for h in heads]
        batch = self.processor(prompts, None, padding_side=padding_side, max_length=max_length)
        mask = batch["attention_mask"].bool()
        starts, ends = [], []
        for b in range(len(prompts)):
            valid = mask[b].nonzero().flatten()
            first, last = int(valid[0]), int(valid[-1]) + 1
            cut = find_answer_start(batch["input_ids"][b, :last], self.ids[THINK_END], start=first + head_lens[b])
            if cut is None:  # cannot happen with build_prompt; kept as a loud guard
                raise GenerationError(f"no {THINK_END} in the no-think prompt of instruction {b}")
            starts.append(cut)
            ends.append(last)
        return batch, starts, ends

    @torch.no_grad()
    def encode_answers(self, prompts: list[str], thoughts: list[str], answers: list[str],
                       num_images: list[int] | None = None) -> InstructionFeatures:
        """Teacher-forced think-mode features: the features the DiT would see if the MLLM had written
        ``<think>\n{thought}\n</think>\n\n{answer}`` for ``prompt`` (the SFT / think() output format).

        Used to train the DiT on the think-mode feature distribution (the no-think pseudo-CoT template gives
        features of the same words in another context). Like `encode_instructions` this is the tokenizer-only
        path: image placeholders are single tokens and no pixels are given (in think() the MLLM sees pixels),
        a documented approximation for edit samples. The trailing <|im_end|> is not included, as in think().
        """
        prompts = self._check_texts(prompts)
        n = len(prompts)
        if not (len(thoughts) == len(answers) == n):
            raise InvalidInputError(f"got {n} prompts, {len(thoughts)} thoughts and {len(answers)} answers")
        num_images = [0] * n if num_images is None else list(num_images)
        heads = [build_prompt(self.tokenizer, p, k, "think") for p, k in zip(prompts, num_images)]
        texts = [h + f"{t}\n{THINK_END}\n\n{a}" for h, t, a in zip(heads, thoughts, answers)]
        head_lens = [len(self.tokenizer.encode(h, add_special_tokens=False)) for h in heads]
        batch = self.processor(texts, None, padding_side="right")
        feats = self.forward_features(batch)
        mask = batch["attention_mask"].bool()
        starts, ends = [], []
        for b in range(n):
            last = int(mask[b].sum())
            cut = find_answer_start(batch["input_ids"][b, :last], self.ids[THINK_END], start=head_lens[b])
            if cut is None:
                raise InvalidInputError(f"thought {b} could not be closed; does it contain {THINK_END}?")
            starts.append(cut)
            ends.append(last)
        features, fmask = _gather_spans(feats, starts, ends)
        decoded = [self.tokenizer.decode(batch["input_ids"][b, s:e], skip_special_tokens=True)
                   for b, (s, e) in enumerate(zip(starts, ends))]
        return InstructionFeatures(features, fmask, [f"{t}\n{THINK_END}\n\n{a}" for t, a in zip(thoughts, answers)],
                                   decoded, [True] * n)

    @torch.no_grad()
    def think(self, instructions: list[str], images: list[list[Image.Image]] | None = None,
              mode: str | list[str] = "think", *,
              max_think_tokens: int = 1024, max_answer_tokens: int = 256, do_sample: bool = True,
              temperature: float = 1.0, top_p: float = 0.95, top_k: int = 20,
              seed: int | list[int] | None = None,
              generator: torch.Generator | list[torch.Generator] | None = None,
              on_missing_think_end: str = "force_close", max_pixels: int = 262144,
              progress: bool = False) -> InstructionFeatures:
        """Think, then return the features of the answer after </think>.

        Batched generation (left padding, per-sample stop at <|im_end|>), the MLLM sees the images (think mode,
        max_pixels 262144 ~ 512x512 like the reference). Then ONE extra batched forward over prompt + generated
        tokens gives the features. Because attention is causal, the states at a position depend only on the tokens
        up to it, so this equals the reference's per-step `output_hidden_states` (up to float rounding) and is
        cheaper than collecting states at every step. As in the reference, the final generated token (normally
        <|im_end|>) is never fed back and has no feature.

        mode: "think" (prompt opens <think>) or "auto" (the model decides; if it answers without <think> the whole
        answer is the instruction), or "chat" (as "auto", on the prompt ``chat`` builds: no ThinkGen system turn;
        used for understanding rollouts); one mode for the batch or one per sample. The answer starts after the
        first </think> in the GENERATED tokens.

        Budgets and policy, per sample:
        * During a thought the stop tokens are masked (a thought cannot end the turn).
        * on_missing_think_end="force_close" (default): after max_think_tokens thought tokens without </think>,
          `</think>\\n\\n` is forced and the answer is generated normally (finished=False).
          "error": such a sample raises GenerationError after the batch (nothing is returned).
        * An answer that reaches max_answer_tokens tokens (not counting <|im_end|>) is cut there (finished=False).
        Nothing ever falls back to feeding the whole sequence.

        Sampling: temperature / top_k / top_p (defaults: Qwen3 thinking settings), or greedy with do_sample=False.
        Seeds are per sample: seed (an int for every sample, or one int per sample) or generator (one per sample,
        or a single one from which one seed per sample is drawn) gives each sample its own torch.Generator; the
        token is drawn from it and forced, so a sample's thoughts are the same alone or inside any batch, and the
        global RNG is left as it was. With neither, HF samples from the global RNG (the reference behaviour).
        progress: show a tqdm bar over decoding steps.

        thoughts[i]: the generated text without its final stop token, special tokens kept (<think>/</think>
        included); instructions[i]: the decoded answer after </think>, special tokens removed, stripped.
        """
        instructions = self._check_texts(instructions)
        modes = [mode] * len(instructions) if isinstance(mode, str) else list(mode)
        if len(modes) != len(instructions):
            raise InvalidInputError(f"got {len(instructions)} instructions but {len(modes)} modes")
        for m in modes:
            _check_mode(m, ("think", "auto", "chat"))
        if on_missing_think_end not in MISSING_THINK_END_POLICIES:
            raise InvalidInputError(f"on_missing_think_end={on_missing_think_end!r}; allowed: "
                                    f"{', '.join(MISSING_THINK_END_POLICIES)}")
        if max_think_tokens < 1 or max_answer_tokens < 1:
            raise InvalidInputError(f"max_think_tokens and max_answer_tokens must be >= 1, got "
                                    f"{max_think_tokens} and {max_answer_tokens}")
        if do_sample and (temperature <= 0 or not 0 < top_p <= 1 or top_k < 0):
            raise InvalidInputError(f"need temperature > 0, 0 < top_p <= 1, top_k >= 0; got temperature="
                                    f"{temperature}, top_p={top_p}, top_k={top_k}")
        if images is not None and len(images) != len(instructions):
            raise InvalidInputError(f"got {len(instructions)} instructions but {len(images)} image lists")
        per_images = [list(x or []) for x in images] if images is not None else [[] for _ in instructions]
        prompts = [build_prompt(self.tokenizer, s, len(ims), m) for s, ims, m in zip(instructions, per_images, modes)]
        batch = self.processor(prompts, per_images, padding_side="left",
                               max_pixels=max_pixels)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        if "pixel_values" in batch:
            batch["pixel_values"] = batch["pixel_values"].to(self.dtype)
        B, P = batch["input_ids"].shape

        close_ids = self.tokenizer.encode(FORCE_CLOSE_TEXT, add_special_tokens=False)
        gens = _sample_generators(seed, generator, B, self.device) if do_sample else None
        max_new = max_think_tokens + len(close_ids) + max_answer_tokens + 2
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=max_new, desc="thinking", unit="tok", leave=False)
        state = _ThinkState(B, P, modes, self.ids, max_think_tokens=max_think_tokens,
                            max_answer_tokens=max_answer_tokens, policy=on_missing_think_end, close_ids=close_ids,
                            do_sample=do_sample, temperature=temperature, top_p=top_p, top_k=top_k,
                            generators=gens, progress=bar)
        gen_cfg = GenerationConfig(
            max_new_tokens=max_new,
            do_sample=do_sample, temperature=1.0, top_p=1.0, repetition_penalty=1.0,
            top_k=0 if do_sample else 50,    # neutral: _ThinkState does the warping; 50 = HF's unset value
            eos_token_id=[self.ids[IM_END], self.ids[PAD_TOKEN]], pad_token_id=self.ids[PAD_TOKEN],
            bos_token_id=None, use_cache=True,
        )
        try:
            with _keep_rng(self.device, gens is not None):
                out = self.model.generate(**batch, generation_config=gen_cfg, synced_gpus=synced_generation(self.model),
                                          logits_processor=LogitsProcessorList([_ProcessorView(state)]),
                                          stopping_criteria=StoppingCriteriaList([_CriterionView(state)]))
        finally:
            if bar is not None:
                bar.close()
        sequences = out if isinstance(out, Tensor) else out.sequences
        if any(state.think_overflow):
            bad = [b for b, x in enumerate(state.think_overflow) if x]
            raise GenerationError(f"samples {bad} used max_think_tokens={max_think_tokens} without closing the "
                                  f"thought ({THINK_END}); raise max_think_tokens or use "
                                  "on_missing_think_end='force_close'")
        gen = sequences[:, P:]
        n_gen = state.n_gen

        # One extra forward over prompt + generated tokens (trailing pads masked; causality makes them harmless).
        full_mask = torch.cat([batch["attention_mask"],
                               (torch.arange(gen.shape[1], device=gen.device)[None, :]
                                < torch.tensor(n_gen, device=gen.device)[:, None]).long()], dim=1)
        fwd = {"input_ids": sequences, "attention_mask": full_mask}
        if "pixel_values" in batch:
            fwd.update(pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"],
                       mm_token_type_ids=torch.cat([batch["mm_token_type_ids"], torch.zeros_like(gen)], dim=1))
        feats = self.forward_features(fwd)

        starts, ends, thoughts, answers, finished, gen_ids = [], [], [], [], [], []
        for b in range(B):
            g = gen[b, : n_gen[b]].tolist()
            gen_ids.append(g)
            cut = generated_answer_start(g, self.ids[THINK_START], self.ids[THINK_END], modes[b])
            if cut is None:  # unreachable: force_close always inserts </think>, "error" raised above
                raise GenerationError(f"sample {b} has no {THINK_END} in its generation")
            body = g[:-1] if g and g[-1] in state.stop_ids else g
            thoughts.append(self.tokenizer.decode(body, skip_special_tokens=False))
            answers.append(self.tokenizer.decode(body[cut:], skip_special_tokens=True).strip())
            starts.append(P + cut)
            ends.append(P + max(len(g) - 1, cut))           # the final generated token has no feature
            finished.append(not (state.forced_close[b] or state.truncated[b]))
        features, fmask = _gather_spans(feats, starts, ends)
        return InstructionFeatures(features, fmask, thoughts, answers, finished, gen_ids)

    @torch.no_grad()
    def chat(self, messages, images: list[Image.Image] | None = None, max_new_tokens: int = 512,
             greedy: bool = True, streamer=None) -> str:
        """Image understanding / plain chat: no ThinkGen system prompt, add_generation_prompt=True.

        messages: a str (one user turn) or chat messages [{"role", "content"}]; content may hold {"type": "image"}
        parts, one per image in `images`. The reference decodes near-greedily (top_k=1); we decode greedily.
        greedy=False samples with Qwen's instruct settings (T=0.7, top_p=0.8, top_k=20). ``streamer``: a transformers
        streamer (e.g. TextIteratorStreamer) that receives the reply's tokens as they are generated.
        """
        if isinstance(messages, str):
            content = [{"type": "image"} for _ in (images or [])] + [{"type": "text", "text": messages}]
            messages = [{"role": "user", "content": content}]
        if max_new_tokens < 1:
            raise InvalidInputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        prompt = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        batch = self.processor([prompt], [list(images or [])], padding_side="left")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        if "pixel_values" in batch:
            batch["pixel_values"] = batch["pixel_values"].to(self.dtype)
        gen_cfg = GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=not greedy, temperature=1.0 if greedy else 0.7,
            top_k=50 if greedy else 20, top_p=1.0 if greedy else 0.8, repetition_penalty=1.0,
            eos_token_id=[self.ids[IM_END], self.ids[PAD_TOKEN]], pad_token_id=self.ids[PAD_TOKEN], bos_token_id=None,
        )
        out = self.model.generate(**batch, generation_config=gen_cfg, synced_gpus=synced_generation(self.model),
                                  streamer=streamer)
        sequences = out if isinstance(out, Tensor) else out.sequences
        return self.tokenizer.decode(sequences[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)

    # -- helpers
    @staticmethod
    def _check_texts(instructions) -> list[str]:
        if isinstance(instructions, str):
            instructions = [instructions]
        instructions = list(instructions)
        if not instructions:
            raise InvalidInputError("instructions is empty; pass at least one string")
        for i, s in enumerate(instructions):
            if not isinstance(s, str):
                raise InvalidInputError(f"instructions[{i}] is a {type(s).__name__}, expected str")
        return instructions
