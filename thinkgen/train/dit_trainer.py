"""Flow-matching training of the DiT (paper stages 1-3).

Per micro-batch (time convention of thinkgen.flow: t = 0 noise, t = 1 data):

    x1      = VAE latents of the output images          (frozen VAE; optionally cached)
    refs    = VAE latents of the input images           (per sample, any sizes)
    feats   = MLLM no-think features of the instructions (frozen MLLM; optionally cached)
    x0 ~ N(0, I);  t = sample_train_t(B, patch tokens)   (logit-normal + resolution shift)
    x_t = t x1 + (1 - t) x0;  v = x1 - x0
    loss = flow_matching_loss(dit(x_t, t, feats, mask, refs), v)

Choices and simplifications (paper.md §3 gives no hyper-parameters):
* optimiser AdamW (0.9, 0.95), wd 0.01, eps 1e-8, linear warm-up then constant or cosine (OmniGen2 ft.yml);
* CFG dropout on the prompt (-> "") and, only when the prompt was dropped, on the references (OmniGen2);
* the MLLM always sees the no-think template ``<think>\\n</think>{instruction}`` (pseudo-CoT, paper §3);
* fp32 master weights; bf16 autocast on CUDA only; the frozen encoders run in bf16 on CUDA, fp32 on CPU;
* data is read in the main process (no DataLoader workers), which keeps resume exact;
* stage 1 trains ``time_caption_embed.caption_embedder.*`` + ``prepad_embed`` only; with ``lora`` only the
  adapters train, and the final ``transformer/`` holds the merged weights.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from .. import flow
from ..checkpoint import atomic_dir, link_or_copy_tree
from ..errors import CheckpointError, ConfigError
from . import parallel
from .cache import TensorCache, folder_fingerprint
from .config import DiTTrainConfig
from .data import DiTBatch, DiTBatcher, build_mixture, validate_jsonl
from .loop import (EMA, RunLogger, TrainState, autocast_context, find_resume_checkpoint, frozen_dtype, image_grid,
                   make_optimizer, read_checkpoint_meta, restore_trainer_state, save_checkpoint, seed_everything,
                   select_trainable, train_loop)
from .models import (LORA_FILE, add_lora, check_model_dir, load_lora_file, load_mllm, load_transformer, load_vae,
                     lora_state, merge_lora_state, save_transformer_folder, write_model_index)
from .parallel import print0


# --------------------------------------------------------------------------- frozen encoders
class FrozenEncoders:
    """MLLM features and VAE latents for DiT batches, with optional on-disk caches."""

    def __init__(self, mllm, vae, device: torch.device, *, max_text_tokens: int, vae_sample: bool = False,
                 feature_cache: TensorCache | None = None, latent_cache: TensorCache | None = None,
                 generator: torch.Generator | None = None):
        self.mllm, self.vae, self.device = mllm, vae, device
        self.max_text_tokens, self.vae_sample = max_text_tokens, vae_sample
        self.feature_cache, self.latent_cache = feature_cache, latent_cache
        self.generator = generator

    # -- text
    def _features_uncached(self, instructions: list[str], num_images: list[int],
                           thinks: list[tuple[str, str] | None] | None = None) -> list[torch.Tensor]:
        """Per-sample valid feature rows. ``thinks[b] = (prompt, think)`` selects the teacher-forced think format
        (see data.CONDITIONS) for sample b; None = the pseudo-CoT template."""
        thinks = thinks or [None] * len(instructions)
        out: list[torch.Tensor | None] = [None] * len(instructions)
        plain = [b for b, th in enumerate(thinks) if th is None]
        forced = [b for b, th in enumerate(thinks) if th is not None]
        if plain:
            enc = self.mllm.encode_instructions([instructions[b] for b in plain], [num_images[b] for b in plain],
                                                mode="nothink")
            for j, b in enumerate(plain):
                out[b] = enc.features[j][enc.mask[j]]             # (L_b, F) valid tokens
        if forced:
            enc = self.mllm.encode_answers([thinks[b][0] for b in forced], [thinks[b][1] for b in forced],
                                           [instructions[b] for b in forced], [num_images[b] for b in forced])
            for j, b in enumerate(forced):
                out[b] = enc.features[j][enc.mask[j]]
        return [f[: self.max_text_tokens].float().cpu() for f in out]

    def features(self, instructions: list[str], num_images: list[int],
                 thinks: list[tuple[str, str] | None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """-> features (B, L, F) float32 right-padded, mask (B, L) bool; on ``self.device``."""
        thinks = thinks or [None] * len(instructions)
        if self.feature_cache is None:
            per = self._features_uncached(instructions, num_images, thinks)
        else:
            keys = [TensorCache.key("nothink", str(n), s) if th is None else
                    TensorCache.key("think", str(n), th[0], th[1], s)
                    for s, n, th in zip(instructions, num_images, thinks)]
            per = self.feature_cache.get_or_compute(
                keys, lambda idx: self._features_uncached([instructions[i] for i in idx], [num_images[i] for i in idx],
                                                          [thinks[i] for i in idx]))
        return pad_features(per, self.device)

    # -- images
    @torch.no_grad()
    def _encode(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        from ..models.vae import encode_latents

        x = torch.stack(images).to(self.vae.device, self.vae.dtype)
        z = encode_latents(self.vae, x, sample=self.vae_sample, generator=self.generator if self.vae_sample else None)
        return [zi.float().cpu() for zi in z]

    def latents(self, images: list[torch.Tensor], keys: list[str]) -> list[torch.Tensor]:
        """Same-size images (3, H, W) -> latents (C, H/8, W/8) float32 CPU."""
        if not images:
            return []
        if self.latent_cache is None:
            return self._encode(images)
        return self.latent_cache.get_or_compute(keys, lambda idx: self._encode([images[i] for i in idx]))

    def batch_latents(self, batch: DiTBatch) -> tuple[torch.Tensor, list[list[torch.Tensor]] | None]:
        x1 = torch.stack(self.latents(list(batch.images), batch.image_keys)).to(self.device)
        refs: list[list[torch.Tensor]] = []
        for imgs, keys in zip(batch.input_images, batch.input_keys):
            refs.append([self.latents([im], [k])[0].to(self.device) for im, k in zip(imgs, keys)])
        return x1, (refs if any(refs) else None)


def pad_features(per: list[torch.Tensor], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad a list of (L_i, F) tensors -> (B, L, F), mask (B, L)."""
    F_ = per[0].shape[-1]
    L = max(f.shape[0] for f in per)
    feats = torch.zeros(len(per), L, F_, dtype=torch.float32)
    mask = torch.zeros(len(per), L, dtype=torch.bool)
    for b, f in enumerate(per):
        feats[b, : f.shape[0]] = f
        mask[b, : f.shape[0]] = True
    return feats.to(device), mask.to(device)


# --------------------------------------------------------------------------- loss
def flow_matching_step(model, x1: torch.Tensor, feats: torch.Tensor, mask: torch.Tensor,
                       refs: list[list[torch.Tensor]] | None, generator: torch.Generator | None,
                       patch_size: int) -> torch.Tensor:
    """One flow-matching loss on a batch of clean latents x1 (B, C, H, W)."""
    B, _, H, W = x1.shape
    num_patch_tokens = (H // patch_size) * (W // patch_size)
    t = flow.sample_train_t(B, num_patch_tokens, generator=generator).to(x1.device)      # (B,)
    x0 = torch.randn(x1.shape, generator=generator, dtype=torch.float32).to(x1.device)   # noise
    x_t = flow.interpolate(x0, x1, t)
    v_target = flow.velocity_target(x0, x1)
    v_pred = model(x_t, t, feats, mask, refs)
    return flow.flow_matching_loss(v_pred, v_target)


# --------------------------------------------------------------------------- samples
class SampleLogger:
    """Every ``sample_every`` steps: a grid of text-to-image samples (thinkgen.sampling.sample, Euler, CFG)."""

    def __init__(self, cfg: DiTTrainConfig, encoders: FrozenEncoders, raw_model, latent_hw: tuple[int, int],
                 prompts: list[str]):
        self.cfg, self.enc, self.raw = cfg, encoders, raw_model
        self.latent_hw, self.prompts = latent_hw, prompts

    @torch.no_grad()
    def __call__(self, st: TrainState, logger: RunLogger) -> None:
        cfg = self.cfg
        if not cfg.sample_every or st.step % cfg.sample_every or not self.prompts:
            return
        if not st.dist.is_main and not parallel.is_fsdp(st.model):
            return          # FSDP2 forwards are collective: every rank samples; otherwise rank 0 only
        from ..mllm import DEFAULT_NEGATIVE_PROMPT
        from ..models.vae import decode_latents
        from ..sampling import DiTConditions, Guidance, sample

        n = len(self.prompts)
        dev = self.enc.device
        feats, mask = self.enc.features(self.prompts, [0] * n)
        neg = self.enc.mllm.encode_instructions([DEFAULT_NEGATIVE_PROMPT] * n, [0] * n, mode="negative")
        cond = DiTConditions(feats, mask, None)
        negc = DiTConditions(neg.features.float().to(dev), neg.mask.to(dev), None)
        h, w = self.latent_hw
        C = self.raw.config.in_channels
        g = torch.Generator("cpu").manual_seed(cfg.seed)      # own generator: training RNG untouched
        noise = torch.randn(n, C, h, w, generator=g).to(dev)
        ts = flow.inference_timesteps(cfg.sample_steps, h * w, device=dev)
        was_training = self.raw.training
        self.raw.eval()
        try:
            with autocast_context(cfg, dev):
                traj = sample(self.raw, noise, cond, negc, ts, Guidance(text_scale=cfg.sample_guidance))
        finally:
            self.raw.train(was_training)
        images = decode_latents(self.enc.vae, traj.latents.to(self.enc.vae.dtype)).float()
        logger.image("samples", image_grid(images), st.step)


# --------------------------------------------------------------------------- entry point
def _validate_sources(cfg: DiTTrainConfig, purpose: str) -> None:
    problems: list[str] = []
    if parallel.is_main_process() and cfg.validate_data:
        for src in cfg.data:
            problems += validate_jsonl(src.path, purpose=purpose)
    problems = parallel.broadcast_object(problems)
    if problems:
        from .data import DataError

        shown = "\n  ".join(problems[:20])
        raise DataError(f"{len(problems)} problem(s) in the training data:\n  {shown}")


def build_dit_data(cfg: DiTTrainConfig, rank: int, world_size: int) -> DiTBatcher:
    mixture = build_mixture([(s.path, s.ratio) for s in cfg.data], rank=rank, world_size=world_size, seed=cfg.seed,
                            shuffle_buffer=cfg.shuffle_buffer, purpose="dit")
    return DiTBatcher(mixture, cfg.batch_size, max_output_pixels=cfg.max_output_pixels,
                      max_side_length=cfg.max_side_length, max_input_pixels=cfg.max_input_pixels,
                      aspect_ratio_buckets=cfg.aspect_ratio_buckets, prompt_dropout_prob=cfg.prompt_dropout_prob,
                      ref_dropout_prob=cfg.ref_dropout_prob, seed=cfg.seed, rank=rank)


def train_dit(cfg: DiTTrainConfig, *, sample_prompts: list[str] | None = None) -> Path:
    """Train the DiT with flow matching; return the exported ``<output_dir>/final`` folder.

    Works single-process and under ``torchrun`` (``cfg.parallel`` = "ddp" / "fsdp2"). Resumes from the
    newest complete checkpoint when ``cfg.resume == "auto"``.
    """
    if not isinstance(cfg, DiTTrainConfig):
        raise ConfigError(f"train_dit needs a DiTTrainConfig, got {type(cfg).__name__}")
    cfg.check_ready()
    model_dir = check_model_dir(cfg.model_dir)
    if cfg.latent_cache_dir and cfg.vae_sample:
        raise ConfigError("latent_cache_dir with vae_sample=true would freeze one posterior sample; "
                          "use vae_sample=false (posterior mode) or turn the latent cache off")
    dinfo = parallel.init_distributed(cfg.device)
    device = dinfo.device
    autocast_context(cfg, device)      # refuses bf16 without CUDA before any work
    seed_everything(cfg.seed + dinfo.rank)
    _validate_sources(cfg, "dit")
    out_dir = Path(cfg.output_dir)
    ckpt = find_resume_checkpoint(cfg)
    if ckpt is not None:
        read_checkpoint_meta(ckpt, cfg, "dit", dinfo.world_size)   # fail fast on config / world-size mismatch
        print0(f"resuming from {ckpt}")

    # -- models
    dit = load_transformer(ckpt / "transformer" if ckpt is not None and not cfg.lora else model_dir / "transformer")
    if cfg.lora:
        add_lora(dit, cfg)
        if ckpt is not None:
            load_lora_file(dit, ckpt / "transformer_lora" / LORA_FILE)
        trainable_names = [n for n, p in dit.named_parameters() if p.requires_grad]
    else:
        trainable_names = select_trainable(dit, cfg.trainable)
    if cfg.gradient_checkpointing:
        dit.enable_gradient_checkpointing()
    dit.to(device).train()
    enc_dtype = frozen_dtype(cfg, device)
    mllm = load_mllm(model_dir, dtype=enc_dtype, device=device)
    mllm.model.requires_grad_(False).eval()
    vae = load_vae(model_dir, dtype=enc_dtype if enc_dtype != torch.float32 else None, device=device)
    if mllm.feature_dim != 2 * dit.config.text_feat_dim:
        raise CheckpointError(f"MLLM features are {mllm.feature_dim}-wide but the DiT expects "
                              f"{2 * dit.config.text_feat_dim}; the components do not belong together")

    noise_gen = torch.Generator("cpu").manual_seed(cfg.seed * 7919 + dinfo.rank)
    vae_gen = torch.Generator("cpu").manual_seed(cfg.seed * 104729 + dinfo.rank)
    fcache = lcache = None
    if cfg.feature_cache_dir:
        fcache = TensorCache(cfg.feature_cache_dir, "mllm-features",
                             folder_fingerprint(model_dir / "mllm", f"nothink|{cfg.max_text_tokens}"))
    if cfg.latent_cache_dir:
        lcache = TensorCache(cfg.latent_cache_dir, "vae-latents", folder_fingerprint(model_dir / "vae"))
    encoders = FrozenEncoders(mllm, vae, device, max_text_tokens=cfg.max_text_tokens, vae_sample=cfg.vae_sample,
                              feature_cache=fcache, latent_cache=lcache, generator=vae_gen)

    # -- parallel wrap, optimizer, EMA
    model = parallel.wrap_model(dit, cfg.parallel, device, keep_in_root=["ref_image_refiner"])
    if cfg.compile:   # after LoRA and sharding: the compiled blocks see the final modules
        dit.compile_blocks()
    named = dict(parallel.unwrap(model).named_parameters())
    trainable = [(n, named[n]) for n in trainable_names]
    optimizer, scheduler = make_optimizer([p for _, p in trainable], cfg)
    ema = EMA(trainable, cfg.ema_decay) if cfg.ema_decay > 0 else None
    data = build_dit_data(cfg, dinfo.rank, dinfo.world_size)

    def weights_state() -> dict[str, torch.Tensor]:
        return parallel.full_state_dict(model)

    def save_weights(d: Path, state: dict[str, torch.Tensor]) -> None:
        if cfg.lora:
            from safetensors.torch import save_file

            (d / "transformer_lora").mkdir()
            save_file(lora_state(state), str(d / "transformer_lora" / LORA_FILE))
        else:
            save_transformer_folder(d / "transformer", dit, state)

    st = TrainState(cfg=cfg, kind="dit", dist=dinfo, model=model, optimizer=optimizer, scheduler=scheduler,
                    data=data, trainable=trainable, save_weights=save_weights, weights_state=weights_state,
                    generators={"noise": noise_gen, "vae": vae_gen}, ema=ema)
    if ckpt is not None:
        restore_trainer_state(st, ckpt)
    n_train = sum(p.numel() for _, p in trainable)
    n_total = sum(p.numel() for p in dit.parameters())
    print0(f"DiT {cfg.stage}{' + LoRA' if cfg.lora else ''}: {n_train:,} of {n_total:,} parameters trainable; "
           f"world size {dinfo.world_size} ({cfg.parallel}); device {device}; start step {st.step}")

    logger = RunLogger(out_dir / "logs", dinfo.is_main, resume_step=st.step)
    patch = dit.config.patch_size
    sampler: dict[str, Any] = {}

    def loss_fn(batch: DiTBatch):
        x1, refs = encoders.batch_latents(batch)
        num_images = [len(r) for r in batch.input_images]
        thinks = [
            ((rec.get("prompt") or instr), rec.get("think") or "")
            if rec.get("condition") == "think" and instr else None
            for rec, instr in zip(batch.records or [{}] * len(batch), batch.instructions)
        ]
        feats, mask = encoders.features(batch.instructions, num_images, thinks)
        if cfg.sample_every and "logger" not in sampler:   # first batch: every rank gets rank 0's choice
            prompts = list(sample_prompts or cfg.sample_prompts) or [s for s in batch.instructions if s][:4]
            prompts, hw = parallel.broadcast_object((prompts, tuple(x1.shape[-2:])))
            sampler["logger"] = SampleLogger(cfg, encoders, dit, hw, prompts)
        with autocast_context(cfg, device):
            loss = flow_matching_step(model, x1, feats, mask, refs, noise_gen, patch)
        return loss, x1.shape[0]

    def on_step(state: TrainState, lg: RunLogger) -> None:
        if "logger" in sampler:
            sampler["logger"](state, lg)

    try:
        if st.step < cfg.max_steps:
            train_loop(st, loss_fn, on_step, logger)
            save_checkpoint(st)
        final = export_dit(cfg, st, model_dir, dit)
    finally:
        logger.close()
    return final


def export_dit(cfg: DiTTrainConfig, st: TrainState, model_dir: Path, dit) -> Path:
    """Write ``<output_dir>/final`` atomically: ``transformer/`` (LoRA merged), ``transformer_ema/``,
    ``transformer_lora/`` and, with ``export_full_model``, copies of the other components of model_dir."""
    state = st.weights_state()
    ema_state = st.ema.state_dict() if st.ema is not None else None
    final = Path(cfg.output_dir) / "final"
    if st.dist.is_main:
        with atomic_dir(final, meta={"step": st.step, "kind": "dit"}) as d:
            merged = merge_lora_state(state, cfg.lora_alpha / cfg.lora_rank) if cfg.lora else state
            save_transformer_folder(d.path / "transformer", dit, merged)
            if cfg.lora:   # adapter_config.json too: `pipe.load_lora` / PEFT can read the folder
                from ..lora import save_adapter

                save_adapter(d.path / "transformer_lora", lora_state(state), cfg.lora_rank, cfg.lora_alpha,
                             cfg.lora_target_modules, "transformer")
            if ema_state is not None:
                ema_full = {**state, **ema_state}
                if cfg.lora:
                    ema_full = merge_lora_state(ema_full, cfg.lora_alpha / cfg.lora_rank)
                save_transformer_folder(d.path / "transformer_ema", dit, ema_full)
            if cfg.export_full_model:   # copies, not hard links: editing the export must not touch model_dir
                for comp in ("mllm", "processor", "vae", "scheduler"):
                    if (model_dir / comp).is_dir():
                        link_or_copy_tree(model_dir / comp, d.path / comp, hardlink=False)
                if (model_dir / "model_index.json").is_file():
                    shutil.copy2(model_dir / "model_index.json", d.path / "model_index.json")
                else:
                    write_model_index(d.path)
        print0(f"exported {final}")
    parallel.barrier()
    return final

