"""Model loading / saving for training, in the released layout.

A model folder holds ``transformer/`` (ThinkGenTransformer2DModel), ``mllm/`` (Qwen3-VL),
``processor/`` (ThinkGenProcessor) and ``vae/`` (diffusers AutoencoderKL), plus ``scheduler/`` and
``model_index.json``. Everything loads strictly through the project's own classes.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch

from ..errors import CheckpointError

COMPONENTS = ("transformer", "mllm", "processor", "vae")
DIT_WEIGHTS = "diffusion_pytorch_model.safetensors"
LORA_FILE = "adapter.safetensors"


def check_model_dir(root: str | os.PathLike, needed=COMPONENTS) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise CheckpointError(f"model folder {str(root)!r} does not exist")
    missing = [c for c in needed if not (root / c).is_dir()]
    if missing:
        raise CheckpointError(f"model folder {root} lacks {', '.join(c + '/' for c in missing)} "
                              f"(released layout: {', '.join(c + '/' for c in COMPONENTS)})")
    return root


def load_transformer(folder: str | os.PathLike):
    """Strict fp32 load of ``transformer/`` (ThinkGenTransformer2DModel.from_pretrained)."""
    from ..models.dit import ThinkGenTransformer2DModel

    return ThinkGenTransformer2DModel.from_pretrained(str(folder), torch_dtype=torch.float32)


def load_mllm(root: str | os.PathLike, dtype=torch.float32, device="cpu", mllm_dir=None):
    """``ThinkGenMLLM`` from ``root/mllm`` (or ``mllm_dir``) + ``root/processor``."""
    from ..mllm import ThinkGenMLLM

    root = Path(root)
    return ThinkGenMLLM.from_pretrained(mllm_dir or root / "mllm", root / "processor", dtype=dtype, device=device)


def load_vae(root: str | os.PathLike, dtype=torch.float32, device="cpu"):
    """Frozen diffusers ``AutoencoderKL`` from ``root/vae`` (strict)."""
    from ..loading import load_vae_strict

    return load_vae_strict(Path(root) / "vae", dtype=dtype).to(device)


def save_transformer_folder(folder: str | os.PathLike, model, state: dict[str, torch.Tensor]) -> None:
    """Write ``config.json`` + ``diffusion_pytorch_model.safetensors`` (what ``save_pretrained`` writes
    for one shard) from a full state dict, so DDP / FSDP2 / LoRA-merged weights all save the same way."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_config(str(folder))
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(folder / DIT_WEIGHTS),
              metadata={"format": "pt"})


# --------------------------------------------------------------------------- LoRA
def add_lora(model, cfg) -> None:
    """Inject peft LoRA adapters into ``model`` (diffusers PeftAdapterMixin or any nn.Module)."""
    from peft import LoraConfig

    lcfg = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.lora_target_modules), init_lora_weights=True)
    if hasattr(model, "add_adapter") and hasattr(model, "set_adapters"):   # diffusers ModelMixin
        model.add_adapter(lcfg)
    else:
        from peft import inject_adapter_in_model

        inject_adapter_in_model(lcfg, model)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)


def lora_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if "lora_" in k}


def merge_lora_state(state: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """Fold LoRA linears into plain weights: W = W0 + scaling * B @ A; keys lose ``.base_layer``.

    ``scaling`` = lora_alpha / r. Works on a full state dict (so also on gathered FSDP2 weights).
    """
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if "lora_" in k:
            continue
        if ".base_layer." in k:
            prefix, leaf = k.split(".base_layer.")
            if leaf == "weight":
                a = state[f"{prefix}.lora_A.default.weight"].float()
                b = state[f"{prefix}.lora_B.default.weight"].float()
                v = (v.float() + scaling * (b @ a)).to(v.dtype)
            out[f"{prefix}.{leaf}"] = v
        else:
            out[k] = v
    return out


def load_lora_file(model, path: Path) -> None:
    """Load adapter tensors into a model that already has the adapters (strict on the LoRA keys)."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"LoRA adapter file {path} is missing")
    state = load_file(str(path))
    expected = lora_state(model.state_dict())
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path} does not match the LoRA config: missing {missing[:10]}, unexpected {unexpected[:10]}")
    model.load_state_dict(state, strict=False)


def write_model_index(root: Path, mllm_class: str = "Qwen3VLForConditionalGeneration") -> None:
    import diffusers

    index = {
        "_class_name": "ThinkGenPipeline",
        "_diffusers_version": diffusers.__version__,
        "mllm": ["transformers", mllm_class],
        "processor": ["thinkgen", "ThinkGenProcessor"],
        "transformer": ["thinkgen", "ThinkGenTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["thinkgen", "ThinkGenScheduler"],
    }
    (root / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


# ------------------------------------------------------------------------------------------- MLLM block expansion
def expansion_plan(n_layers: int, add: int) -> list[int | None]:
    """Layer order of a language model grown by ``add`` layers: old layer indices, ``None`` for a new layer. The new
    layers fill the gaps after layers 0 .. n-3 (earliest gaps first), never the gap between the last two layers: the
    DiT reads the raw output of layer n-2 and the final norm, so those two must keep their inputs."""
    if n_layers < 3:
        raise ValueError(f"block expansion needs >= 3 decoder layers (got {n_layers}): the last two stay adjacent")
    if add < 1:
        raise ValueError(f"add={add} must be >= 1 (the number of new decoder layers)")
    gaps = n_layers - 2
    per_gap = [add // gaps + (g < add % gaps) for g in range(gaps)]
    order: list[int | None] = []
    for i in range(n_layers):
        order.append(i)
        if i < gaps:
            order += [None] * per_gap[i]
    return order


def expand_mllm_layers(model, add: int):
    """Block expansion (LLaMA-Pro style) of a Qwen3-VL model: a new model with ``add`` more language-model decoder
    layers, each new one a copy of the layer before it with ``self_attn.o_proj`` and ``mlp.down_proj`` zeroed, so it
    adds nothing to the residual stream: the new model computes the same logits and DiT features as the old one,
    and training continues with the extra capacity. Returns ``(new_model, order)`` (see ``expansion_plan``)."""
    from transformers import Qwen3VLForConditionalGeneration

    cfg = copy.deepcopy(model.config)
    n = cfg.text_config.num_hidden_layers
    order = expansion_plan(n, add)
    cfg.text_config.num_hidden_layers = n + add
    new = Qwen3VLForConditionalGeneration(cfg).to(next(model.parameters()).dtype).eval()
    old_layers = model.model.language_model.layers
    state = {k: v for k, v in model.state_dict().items() if ".language_model.layers." not in k}
    src = 0
    for j, i in enumerate(order):
        src = src if i is None else i              # a new layer copies the last old layer before it
        for k, v in old_layers[src].state_dict().items():
            v = v.clone()
            if i is None and k.rsplit(".", 1)[0] in ("self_attn.o_proj", "mlp.down_proj"):   # weight (and bias)
                v.zero_()
            state[f"model.language_model.layers.{j}.{k}"] = v
    new.load_state_dict(state, strict=True)
    return new, order


def widen_mllm(model, head_factor: int = 1, intermediate_size: int | None = None, seed: int = 0):
    """Width expansion of a Qwen3-VL language model that keeps its function: every decoder layer gets
    ``head_factor`` times the attention heads (query AND key/value heads, so each old query head still reads its old
    key/value head) and an MLP of ``intermediate_size`` units. The new heads' and units' input projections
    (q/k/v, gate/up) are drawn at the model's ``initializer_range``; their output projections (the new columns of
    ``o_proj`` and ``down_proj``) are zero, so the residual stream -- hence logits and DiT features -- is what it was,
    while the new parts get gradients at once. The residual width (``hidden_size``) and head size do not change.
    Returns a new model; the old one is untouched."""
    from transformers import Qwen3VLForConditionalGeneration

    tc = model.config.text_config
    heads, kv, inter = tc.num_attention_heads, tc.num_key_value_heads, tc.intermediate_size
    new_inter = inter if intermediate_size is None else int(intermediate_size)
    if head_factor < 1:
        raise ValueError(f"head_factor={head_factor} must be >= 1 (1 keeps the heads)")
    if new_inter < inter:
        raise ValueError(f"intermediate_size={new_inter} is below the model's {inter}: widening cannot shrink the MLP")
    if head_factor == 1 and new_inter == inter:
        raise ValueError(f"nothing to widen: give head_factor > 1 or an intermediate_size above {inter}")
    cfg = copy.deepcopy(model.config)
    cfg.text_config.num_attention_heads = heads * head_factor
    cfg.text_config.num_key_value_heads = kv * head_factor
    cfg.text_config.intermediate_size = new_inter
    dtype = next(model.parameters()).dtype
    new = Qwen3VLForConditionalGeneration(cfg).to(dtype).eval()
    gen = torch.Generator().manual_seed(seed)
    std = float(getattr(tc, "initializer_range", 0.02))
    hd = tc.head_dim

    def grow_rows(w: torch.Tensor, rows: int) -> torch.Tensor:      # [out, in] -> [rows, in], new rows random
        extra = torch.randn(rows - w.shape[0], w.shape[1], generator=gen, dtype=torch.float32) * std
        return torch.cat([w, extra.to(w.dtype)], 0)

    def grow_cols(w: torch.Tensor, cols: int) -> torch.Tensor:      # [out, in] -> [out, cols], new columns zero
        return torch.cat([w, w.new_zeros(w.shape[0], cols - w.shape[1])], 1)

    state = dict(model.state_dict())
    for i in range(tc.num_hidden_layers):
        p = f"model.language_model.layers.{i}."
        for name, rows in (("self_attn.q_proj", heads * head_factor * hd), ("self_attn.k_proj", kv * head_factor * hd),
                           ("self_attn.v_proj", kv * head_factor * hd), ("mlp.gate_proj", new_inter),
                           ("mlp.up_proj", new_inter)):
            state[p + name + ".weight"] = grow_rows(state[p + name + ".weight"], rows)
            if p + name + ".bias" in state:
                b = state[p + name + ".bias"]
                state[p + name + ".bias"] = torch.cat([b, b.new_zeros(rows - b.shape[0])])
        state[p + "self_attn.o_proj.weight"] = grow_cols(state[p + "self_attn.o_proj.weight"], heads * head_factor * hd)
        state[p + "mlp.down_proj.weight"] = grow_cols(state[p + "mlp.down_proj.weight"], new_inter)
    new.load_state_dict(state, strict=True)
    return new


def is_one_token(tokenizer, word: str) -> bool:
    """Whether ``word``, in the form it has after a space (" word"), is a single token of ``tokenizer``."""
    return len(tokenizer.tokenize(" " + word)) == 1


def add_word_tokens(model, tokenizer, words, init_from=None):
    """Give each of ``words`` its own token (" word", the form it has after a space), appended after the existing
    ids, and grow the model's input embeddings and LM head by as many rows. Existing ids, rows and hence the DiT
    features of any text without the new words are unchanged. A new row starts as the mean of the rows of the tokens
    of ``init_from[word]`` (text made of existing words, e.g. "cyan star" for "cyanstar"), else of the word's own
    current tokenization; a mean LM-head row never scores above the larger of its source rows, so greedy decoding is
    unchanged too (but for ties). ``tokenizer`` is changed in place (pass a copy to keep the old one); returns the new
    ids. ``ValueError`` (tokenizer untouched) for a word that already is one token or contains whitespace, or a
    tokenizer whose length is not the model's vocabulary size."""
    from tokenizers import AddedToken

    init_from = dict(init_from or {})
    words = list(dict.fromkeys(words))
    emb_in, emb_out = model.get_input_embeddings(), model.get_output_embeddings()
    old_n = emb_in.weight.shape[0]
    if len(tokenizer) != old_n:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the model {old_n} embedding rows: they do not "
                         "belong together, so new ids would not follow the model's rows")
    for w in words:
        if not w or any(ch.isspace() for ch in w):
            raise ValueError(f"word {w!r} must be non-empty without whitespace")
        if is_one_token(tokenizer, w):
            raise ValueError(f"word {w!r} already is one token (id "
                             f"{tokenizer.convert_tokens_to_ids(tokenizer.tokenize(' ' + w))[0]}); nothing to add")
    sources = {w: tokenizer(" " + init_from.get(w, w), add_special_tokens=False)["input_ids"] for w in words}
    tokenizer.add_tokens([AddedToken(" " + w, normalized=False, special=False) for w in words])
    ids = [tokenizer.convert_tokens_to_ids(" " + w) for w in words]
    with torch.no_grad():
        rows_in = torch.stack([emb_in.weight[sources[w]].mean(0) for w in words])
        rows_out = torch.stack([emb_out.weight[sources[w]].mean(0) for w in words])
        model.resize_token_embeddings(old_n + len(words), mean_resizing=False)
        model.get_input_embeddings().weight[old_n:] = rows_in
        model.get_output_embeddings().weight[old_n:] = rows_out
    return ids
