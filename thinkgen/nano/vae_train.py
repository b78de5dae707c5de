"""Train the ThinkGen-Nano VAE (diffusers AutoencoderKL, x4: 64x64 RGB -> 4x16x16) on rendered scenes.

Loss = L1 + MSE on the reconstruction (from a posterior sample) + ``kl_weight`` * KL. Scenes are drawn on the fly
(random scenes with and without signs, canonical layouts of composition / text prompts). At the end the latent
statistics of the posterior mode set ``shift_factor`` (mean) and ``scaling_factor`` (1 / std), so the normalised
latents ``(mean - shift) * scale`` have about unit variance (thinkgen.models.vae). ``parse_rate`` reports the share
of held-out scenes whose VAE reconstruction the parser reads back exactly.

    python -m thinkgen.nano.vae_train --out DIR [--preset quick] [--steps N] [--batch-size B]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from thinkgen.nano import world
from thinkgen.nano.models import build_vae, sizes


def scene_batch(rng: random.Random, n: int) -> torch.Tensor:
    """(n, 3, 64, 64) in [-1, 1] of random scenes (30% with a sign)."""
    arr = []
    for _ in range(n):
        sc = world.random_scene(rng, text_prob=0.35, jitter=2 if rng.random() < 0.3 else 0, unique=rng.random() < 0.7)
        arr.append(np.asarray(world.render(sc), dtype=np.float32))
    x = torch.from_numpy(np.stack(arr)).permute(0, 3, 1, 2) / 127.5 - 1.0
    return x


def to_pil(x: torch.Tensor):
    from PIL import Image

    a = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(v) for v in a]


@torch.no_grad()
def latent_stats(vae, n: int = 256, seed: int = 123) -> tuple[float, float]:
    rng = random.Random(seed)
    zs = []
    for i in range(0, n, 32):
        zs.append(vae.encode(scene_batch(rng, min(32, n - i))).latent_dist.mode())
    z = torch.cat(zs)
    return float(z.mean()), float(z.std())


@torch.no_grad()
def parse_rate(vae, n: int = 200, seed: int = 777) -> dict:
    """Share of random scenes whose reconstruction parses to the same scene signature (objects + text)."""
    from thinkgen.nano.parser import parse

    rng = random.Random(seed)
    ok = total = 0
    text_ok = text_total = 0
    for i in range(0, n, 25):
        scenes = [world.random_scene(rng, text_prob=0.35) for _ in range(min(25, n - i))]
        x = torch.from_numpy(np.stack([np.asarray(world.render(s), dtype=np.float32) for s in scenes]))
        x = x.permute(0, 3, 1, 2) / 127.5 - 1.0
        rec = vae.decode(vae.encode(x).latent_dist.mode()).sample
        for sc, img in zip(scenes, to_pil(rec)):
            got = parse(img)
            total += 1
            ok += int(got.signature() == sc.signature())
            if sc.text:
                text_total += 1
                text_ok += int(got.text == sc.text)
    return {"scenes": total, "parse_rate": ok / max(total, 1), "text_rate": text_ok / max(text_total, 1)}


def train_vae(out: str | os.PathLike, preset: str = "quick", steps: int = 1500, batch_size: int = 16,
              lr: float = 2e-3, kl_weight: float = 1e-6, seed: int = 0, device: str = "cpu",
              log_every: int = 50, check_scenes: int = 200) -> Path:
    """Train and save ``out/vae`` (diffusers folder with the fitted scale/shift) and ``out/vae_report.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    vae = build_vae(sizes(preset), seed=seed).to(device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    warm = max(1, min(100, steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))))
    rng = random.Random(seed)
    t0 = time.time()
    log = []
    for step in range(1, steps + 1):
        x = scene_batch(rng, batch_size).to(device)
        post = vae.encode(x).latent_dist
        y = vae.decode(post.sample()).sample
        rec = (y - x).abs().mean() + (y - x).pow(2).mean()
        kl = post.kl().mean() / x[0].numel()
        loss = rec + kl_weight * kl * x[0].numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % log_every == 0 or step == steps:
            entry = {"step": step, "rec": round(float(rec.detach()), 5), "kl": round(float(kl.detach()), 4),
                     "s": round(time.time() - t0, 1)}
            log.append(entry)
            print("vae", json.dumps(entry), flush=True)
    vae.eval().requires_grad_(False)
    mean, std = latent_stats(vae)
    vae.register_to_config(shift_factor=mean, scaling_factor=1.0 / max(std, 1e-6))
    report = {"steps": steps, "batch_size": batch_size, "train_s": round(time.time() - t0, 1),
              "latent_mean": mean, "latent_std": std, "log": log}
    if check_scenes:
        report.update(parse_rate(vae, check_scenes))
        print("vae parse check", json.dumps({k: report[k] for k in ("scenes", "parse_rate", "text_rate")}), flush=True)
    vae.save_pretrained(out / "vae")
    (out / "vae_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return out / "vae"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="thinkgen.nano.vae_train", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--preset", default="quick")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check-scenes", type=int, default=200, help="scenes for the parser check (0 = skip)")
    a = p.parse_args(argv)
    train_vae(a.out, a.preset, a.steps, a.batch_size, a.lr, seed=a.seed, device=a.device,
              check_scenes=a.check_scenes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
