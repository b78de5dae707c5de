"""Supervised fine-tuning of the MLLM on think traces and answers.

Training text (loss ONLY on the assistant turn after ``<|im_start|>assistant\\n``, labels -100 elsewhere):

* generation samples (t2i / edit / ic): the ThinkGen think-mode prompt (system prompt + user turn with one
  vision placeholder per input image) followed by
  ``<think>\\n{think}\\n</think>\\n\\n{answer}<|im_end|>``; ``answer`` defaults to the instruction;
* understanding samples: no system prompt (as ``ThinkGenMLLM.chat``), the user turn, then the plain answer
  ``{answer}<|im_end|>`` (with a ``<think>`` block first when the record has a think trace).

Prompt and assistant text are tokenised separately and concatenated, so the label boundary is exact.
Input images go through the processor (pixel_values, image_grid_thw, mm_token_type_ids). Full
fine-tuning (vision tower frozen by default) or LoRA (peft) on the language model's projections.
Checkpoints / resume / logging are the DiT trainer's (thinkgen.train.loop); the export is
``<output_dir>/final/{mllm,processor}/``.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint import atomic_dir
from ..errors import ConfigError
from ..mllm import capture_features
from ..tokenization import VISION_END
from . import parallel
from .config import MLLMSFTConfig
from .data import DataError, SFTBatcher, build_mixture, validate_jsonl
from .loop import (RunLogger, TrainState, autocast_context, find_resume_checkpoint, make_optimizer,
                   read_checkpoint_meta, restore_trainer_state, save_checkpoint, seed_everything, train_loop)
from .models import LORA_FILE, add_lora, check_model_dir, load_lora_file, load_mllm, lora_state, merge_lora_state
from .parallel import print0

IGNORE_INDEX = -100
ASSISTANT_HEADER = "<|im_start|>assistant\n"


def sft_texts(tokenizer, rec: dict) -> tuple[str, str]:
    """(prompt, assistant) strings of one record; the prompt ends with ``<|im_start|>assistant\\n``."""
    from ..mllm import VISION_PLACEHOLDER, build_prompt

    if rec["task_type"] == "anchor":      # label-free no-think row (feature anchoring): everything is prompt
        return build_prompt(tokenizer, rec["instruction"], 0, mode="nothink"), ""
    n = len(rec.get("input_images") or [])
    think = rec.get("think") or ""
    answer = rec.get("answer")
    if rec["task_type"] == "understanding":
        user = VISION_PLACEHOLDER * n + rec["instruction"]
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                               add_generation_prompt=False) + ASSISTANT_HEADER
        head = f"<think>\n{think}\n</think>\n\n" if think else ""
        return prompt, f"{head}{answer or ''}<|im_end|>"
    prompt = build_prompt(tokenizer, rec["instruction"], n, mode="auto")     # ... <|im_start|>assistant\n
    assert prompt.endswith(ASSISTANT_HEADER), prompt[-40:]
    answer = rec["instruction"] if answer is None else answer
    return prompt, f"<think>\n{think}\n</think>\n\n{answer}<|im_end|>"


def build_sft_batch(processor, records: list[dict], max_seq_len: int, max_image_pixels: int,
                    think_mask: bool = False) -> dict[str, torch.Tensor]:
    """Tokenise records (with their PIL ``images``) -> right-padded model inputs with ``labels``. ``think_mask``:
    also return ``think_mask`` [B, T] (bool), True on the supervised tokens of the think block (``<think>`` up to
    and including ``</think>``) -- pop it before the forward."""
    from ..tokenization import THINK_END

    tok = processor.tokenizer
    end_id = tok.convert_tokens_to_ids(THINK_END)
    rows, pix, grids, thinks = [], [], [], []
    for rec in records:
        prompt, assistant = sft_texts(tok, rec)
        imgs = rec.get("images") or []
        enc = processor([prompt], [imgs], padding_side="right", max_pixels=max_image_pixels)
        p_ids = enc["input_ids"][0].tolist()
        a_ids = tok.encode(assistant, add_special_tokens=False)
        if len(p_ids) >= max_seq_len:
            raise DataError(f"{rec.get('_file')}:{rec.get('_line')}: the prompt is {len(p_ids)} tokens "
                            f"(images included), not below max_seq_len={max_seq_len}; raise max_seq_len or shrink images")
        ids = (p_ids + a_ids)[:max_seq_len]
        labels = ([IGNORE_INDEX] * len(p_ids) + a_ids)[:max_seq_len]
        mm = enc["mm_token_type_ids"][0].tolist() + [0] * len(a_ids) if imgs else None
        rows.append((ids, labels, mm[:max_seq_len] if mm else None))
        n_think = a_ids.index(end_id) + 1 if end_id in a_ids else 0
        thinks.append((len(p_ids), min(len(p_ids) + n_think, max_seq_len)))
        if imgs:
            pix.append(enc["pixel_values"])
            grids.append(enc["image_grid_thw"])
    T = max(len(r[0]) for r in rows)
    B = len(rows)
    pad = tok.pad_token_id
    input_ids = torch.full((B, T), pad, dtype=torch.long)
    attention_mask = torch.zeros((B, T), dtype=torch.long)
    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    mm_types = torch.zeros((B, T), dtype=torch.long)
    for b, (ids, lab, mm) in enumerate(rows):
        input_ids[b, : len(ids)] = torch.tensor(ids)
        attention_mask[b, : len(ids)] = 1
        labels[b, : len(lab)] = torch.tensor(lab)
        if mm is not None:
            mm_types[b, : len(mm)] = torch.tensor(mm)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    if pix:
        batch.update(pixel_values=torch.cat(pix), image_grid_thw=torch.cat(grids), mm_token_type_ids=mm_types)
    if think_mask:
        tm = torch.zeros((B, T), dtype=torch.bool)
        for b, (a, e) in enumerate(thinks):
            tm[b, a:e] = True
        batch["think_mask"] = tm
    return batch


def save_mllm_folder(folder: Path, model, state: dict[str, torch.Tensor]) -> None:
    """``config.json`` + ``generation_config.json`` + ``model.safetensors`` (what save_pretrained writes for one
    shard, same key names) from a full state dict, so DDP / FSDP2 / LoRA-merged weights save the same way."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(str(folder))
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(str(folder))
    seen: set[int] = set()
    out = {}
    for k, v in state.items():
        v = v.detach().cpu().contiguous()
        if v.data_ptr() in seen and v.numel():   # tied weights: safetensors refuses shared storage
            v = v.clone()
        seen.add(v.data_ptr())
        out[k] = v
    save_file(out, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _trainable_mllm(model, cfg: MLLMSFTConfig) -> list[str]:
    names = []
    for name, p in model.named_parameters():
        if cfg.lora:
            train = "lora_" in name
        else:
            train = not (cfg.freeze_vision and ".visual." in f".{name}")
        p.requires_grad_(train)
        if train:
            names.append(name)
    return names


def train_mllm(cfg: MLLMSFTConfig) -> Path:
    """SFT the MLLM; return ``<output_dir>/final`` (``mllm/`` + ``processor/``, LoRA merged)."""
    if not isinstance(cfg, MLLMSFTConfig):
        raise ConfigError(f"train_mllm needs an MLLMSFTConfig, got {type(cfg).__name__}")
    cfg.check_ready()
    model_dir = check_model_dir(cfg.model_dir, ("mllm", "processor"))
    ref_root = check_model_dir(cfg.anchor_model_dir or cfg.model_dir, ("mllm", "processor")) \
        if cfg.anchor_weight > 0 else None
    dinfo = parallel.init_distributed(cfg.device)
    device = dinfo.device
    autocast_context(cfg, device)      # refuses bf16 without CUDA before any work
    seed_everything(cfg.seed + dinfo.rank)
    problems: list[str] = []
    if dinfo.is_main and cfg.validate_data:
        for src in cfg.data:
            problems += validate_jsonl(src.path, purpose="mllm")
    problems = parallel.broadcast_object(problems)
    if problems:
        raise DataError(f"{len(problems)} problem(s) in the training data:\n  " + "\n  ".join(problems[:20]))
    ckpt = find_resume_checkpoint(cfg)
    if ckpt is not None:
        read_checkpoint_meta(ckpt, cfg, "mllm", dinfo.world_size)
        print0(f"resuming from {ckpt}")

    mllm = load_mllm(model_dir, dtype=torch.float32, device="cpu",
                     mllm_dir=ckpt / "mllm" if ckpt is not None and not cfg.lora else None)
    net, processor = mllm.model, mllm.processor
    if cfg.lora:
        add_lora(net, cfg)
        if ckpt is not None:
            load_lora_file(net, ckpt / "mllm_lora" / LORA_FILE)
    trainable_names = _trainable_mllm(net, cfg)
    if cfg.gradient_checkpointing:
        net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(net, "enable_input_require_grads") and cfg.lora:
            net.enable_input_require_grads()
    net.config.use_cache = False
    net.to(device).train()

    model = parallel.wrap_model(net, cfg.parallel, device, keep_in_root=["model.visual"])
    named = dict(parallel.unwrap(model).named_parameters())
    trainable = [(n, named[n]) for n in trainable_names]
    optimizer, scheduler = make_optimizer([p for _, p in trainable], cfg)
    mixture = build_mixture([(s.path, s.ratio) for s in cfg.data], rank=dinfo.rank, world_size=dinfo.world_size,
                            seed=cfg.seed, shuffle_buffer=cfg.shuffle_buffer, purpose="mllm")
    if cfg.max_image_pixels < processor.min_pixels:
        # the processor would upscale to min_pixels at inference but SFT images would be shrunk below it:
        # the model would train on a different number of visual tokens than think()/chat() give it
        raise ConfigError(
            f"max_image_pixels={cfg.max_image_pixels} is below the processor's min_pixels={processor.min_pixels}; "
            f"SFT would see other image sizes than inference. Set max_image_pixels >= {processor.min_pixels}."
        )
    data = SFTBatcher(mixture, cfg.batch_size, max_image_pixels=cfg.max_image_pixels)

    def weights_state() -> dict[str, torch.Tensor]:
        return parallel.full_state_dict(model)

    def save_weights(d: Path, state: dict[str, torch.Tensor]) -> None:
        if cfg.lora:
            from safetensors.torch import save_file

            (d / "mllm_lora").mkdir()
            save_file(lora_state(state), str(d / "mllm_lora" / LORA_FILE))
        else:
            save_mllm_folder(d / "mllm", net, state)
            processor.save_pretrained(d / "processor")

    st = TrainState(cfg=cfg, kind="mllm", dist=dinfo, model=model, optimizer=optimizer, scheduler=scheduler,
                    data=data, trainable=trainable, save_weights=save_weights, weights_state=weights_state)
    if ckpt is not None:
        restore_trainer_state(st, ckpt)
    n_train = sum(p.numel() for _, p in trainable)
    print0(f"MLLM SFT{' + LoRA' if cfg.lora else ''}: {n_train:,} of {sum(p.numel() for p in net.parameters()):,} "
           f"parameters trainable; world size {dinfo.world_size} ({cfg.parallel}); start step {st.step}")
    logger = RunLogger(Path(cfg.output_dir) / "logs", dinfo.is_main, resume_step=st.step)

    anchor = anchor_proc = None
    if ref_root is not None:
        ref_mllm = load_mllm(ref_root, dtype=torch.float32, device="cpu")
        anchor, anchor_proc = ref_mllm.model.requires_grad_(False).eval().to(device), ref_mllm.processor
        print0(f"feature anchoring to {ref_root} (weight {cfg.anchor_weight}"
               f"{', image-conditioned records too' if cfg.anchor_images else ''})")

    def loss_fn(records: list[dict]):
        rows = records + (anchor_rows(records) if anchor is not None else [])
        batch = build_sft_batch(processor, rows, cfg.max_seq_len, cfg.max_image_pixels,
                                think_mask=cfg.think_loss_weight != 1.0)
        batch = {k: v.to(device) for k, v in batch.items()}
        if "pixel_values" in batch:
            batch["pixel_values"] = batch["pixel_values"].to(next(net.parameters()).dtype)
        labels = batch.pop("labels")
        tm = batch.pop("think_mask", None)
        weights = None if tm is None else torch.where(tm, cfg.think_loss_weight, 1.0)
        with autocast_context(cfg, device), capture_features(model) as feats:
            logits = model(**batch, use_cache=False).logits
        if cfg.loss_reduction == "token":
            loss = lm_token_loss(logits, labels, weights)
        else:
            loss = per_sample_lm_loss(logits, labels, weights)
        if anchor is not None:
            keep = torch.tensor([not r.get("images") for r in rows], device=device)
            if bool(keep.any()):
                sub = {"input_ids": batch["input_ids"][keep], "attention_mask": batch["attention_mask"][keep]}
                with torch.no_grad(), autocast_context(cfg, device), capture_features(anchor) as ref:
                    anchor(**sub, use_cache=False, logits_to_keep=1)
                loss = loss + cfg.anchor_weight * anchor_loss(feats["features"][keep], ref["features"],
                                                              sub["attention_mask"])
            img = [i for i, r in enumerate(rows) if r.get("images") and r["task_type"] != "understanding"]
            if cfg.anchor_images and img:
                # the reference reads the images with its own processor (its own number of visual tokens), so
                # compare the text after the last image: the same tokens, aligned from the end of each row
                rb = build_sft_batch(anchor_proc, [rows[i] for i in img], cfg.max_seq_len, cfg.max_image_pixels)
                rb.pop("labels")
                rb = {k: v.to(device) for k, v in rb.items()}
                with torch.no_grad(), autocast_context(cfg, device), capture_features(anchor) as ref:
                    anchor(**rb, use_cache=False, logits_to_keep=1)
                end_id = processor.tokenizer.convert_tokens_to_ids(VISION_END)
                loss = loss + cfg.anchor_weight * suffix_anchor_loss(
                    feats["features"][img], batch["input_ids"][img], batch["attention_mask"][img],
                    ref["features"], rb["attention_mask"], end_id)
        return loss, len(records)

    try:
        if st.step < cfg.max_steps:
            train_loop(st, loss_fn, None, logger)
            save_checkpoint(st)
        final = export_mllm(cfg, st, net, processor)
    finally:
        logger.close()
    return final


def anchor_rows(records: list[dict]) -> list[dict]:
    """Extra label-free rows for feature anchoring: each text-only generation record in the no-think form (the
    prompt the DiT's features come from with thinking off). The records themselves (think form) are anchored too;
    with ``anchor_images`` the image-conditioned ones as well (their text after the image)."""
    out = []
    for r in records:
        if r.get("images") or r.get("input_images") or r["task_type"] == "understanding":
            continue
        out.append({"task_type": "anchor", "instruction": r["instruction"], "images": []})
    return out


def anchor_loss(feats: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Relative squared distance sum|f - f_ref|^2 / sum|f_ref|^2 over the attended positions. feats, ref: [B, T, D];
    mask: [B, T] (1 = real token)."""
    m = mask.unsqueeze(-1).to(feats.dtype)
    return ((feats.float() - ref.float()).pow(2) * m).sum() / (ref.float().pow(2) * m).sum().clamp_min(1e-12)


def suffix_anchor_loss(feats: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, ref: torch.Tensor,
                       ref_mask: torch.Tensor, end_id: int) -> torch.Tensor:
    """``anchor_loss`` over the tokens after the last ``end_id`` (``<|vision_end|>``) of each row, when the reference
    rows hold the same text after a different number of visual tokens: the suffixes are aligned from the end of each
    (right-padded) row. feats, ref: [B, T, D] / [B, T', D]; ids, mask: [B, T]; ref_mask: [B, T']."""
    num = feats.new_zeros((), dtype=torch.float32)
    den = 0.0
    for b in range(feats.shape[0]):
        ls, lr = int(mask[b].sum()), int(ref_mask[b].sum())
        row = ids[b, :ls].tolist()
        n = row[::-1].index(end_id)                          # tokens after the last end_id
        f, fr = feats[b, ls - n:ls].float(), ref[b, lr - n:lr].float()
        num = num + (f - fr).pow(2).sum()
        den += float(fr.pow(2).sum())
    return num / max(den, 1e-12)


def lm_token_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token cross-entropy averaged over every supervised token of the batch (HF's causal-LM loss); with
    ``weights`` [B, L] (per label position) a weighted mean."""
    tgt = labels[:, 1:]
    keep = tgt != IGNORE_INDEX
    if not bool(keep.any()):
        return logits.sum() * 0.0
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), tgt.masked_fill(~keep, 0),
                                           reduction="none")
    w = keep.float() if weights is None else keep.float() * weights[:, 1:].float()
    return (ce * w).sum() / w.sum().clamp_min(1e-12)


def per_sample_lm_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token cross-entropy averaged over each sample's supervised tokens (labels != IGNORE_INDEX), then over the
    samples that have any. logits: [B, L, V]; labels: [B, L] (unshifted, as HF's causal-LM loss takes them);
    ``weights`` [B, L]: per label position (a weighted mean within each sample)."""
    tgt = labels[:, 1:]
    keep = tgt != IGNORE_INDEX
    w = keep.float() if weights is None else keep.float() * weights[:, 1:].float()
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), tgt.masked_fill(~keep, 0),
                                           reduction="none") * w             # [B, L-1]
    n = w.sum(1)
    has = n > 0
    if not bool(has.any()):
        return logits.sum() * 0.0
    return (ce.sum(1)[has] / n[has]).mean()


def export_mllm(cfg: MLLMSFTConfig, st: TrainState, net, processor) -> Path:
    state = st.weights_state()
    final = Path(cfg.output_dir) / "final"
    if st.dist.is_main:
        with atomic_dir(final, meta={"step": st.step, "kind": "mllm"}) as d:
            merged = merge_lora_state(state, cfg.lora_alpha / cfg.lora_rank) if cfg.lora else state
            save_mllm_folder(d.path / "mllm", net, merged)
            processor.save_pretrained(d.path / "processor")
            if cfg.lora:   # adapter_config.json too: `pipe.load_lora` / PEFT can read the folder
                from ..lora import save_adapter

                save_adapter(d.path / "mllm_lora", lora_state(state), cfg.lora_rank, cfg.lora_alpha,
                             cfg.lora_target_modules, "mllm")
        print0(f"exported {final}")
    parallel.barrier()
    return final
