"""Train ThinkGen-Nano from scratch: data -> VAE -> MLLM SFT -> DiT stage 1 -> DiT stage 2 -> released layout -> eval.

    thinkgen train nano --out runs/nano [--preset smoke|quick|full] [--device cpu|cuda] [--jobs 2]
                        [--set KEY=VALUE ...] [--skip-eval]

Every stage writes into ``OUT/<stage>/`` and a ``OUT/<stage>.done`` marker; a rerun skips finished stages (and the
project trainers resume unfinished ones from their last checkpoint). Stages:

1. ``data``  - ``thinkgen.nano.data.write_datasets``: SFT + DiT JSONL (train split only) and rendered images.
2. ``vae``   - ``thinkgen.nano.vae_train``: AutoencoderKL x4 on rendered scenes, scale / shift from latent stats.
   With ``--jobs 2`` it runs in a subprocess on one thread while the MLLM SFT uses the other.
3. ``mllm``  - tokenizer (``models.build_nano_tokenizer``) + random tiny Qwen3-VL, then the project's MLLM SFT
   (``thinkgen.train.mllm_sft.train_mllm``, vision tower trained too).
4. ``dit1``  - the project's DiT trainer, paper stage 1: connector (caption embedder) + prepad states only,
   pseudo-CoT no-think features of the frozen SFT MLLM.
5. ``dit2``  - paper stage 2: the whole DiT on the same pseudo-CoT data (composition, reasoning targets, text,
   editing and reflection with references), CFG dropout.
6. ``final`` - ``ThinkGenPipeline.save_pretrained`` in the released layout, ``thinkgen_defaults`` in model_index.json.
7. ``eval``  - ``thinkgen.nano.evaluate`` on held-out prompts (small; the full table is a separate command).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

STAGES = ("data", "vae", "mllm", "dit1", "dit2", "final", "eval")


@dataclass(frozen=True)
class Recipe:
    sizes: str
    n_sft: int
    n_dit: int
    vae_steps: int
    vae_batch: int
    mllm_steps: int
    mllm_batch: int
    mllm_lr: float
    dit1_steps: int
    dit2_steps: int
    dit_batch: int
    dit1_lr: float
    dit2_lr: float
    sample_steps: int = 20
    eval_n: int = 8
    eval_seeds: int = 2


RECIPES: dict[str, Recipe] = {
    "smoke": Recipe("smoke", n_sft=24, n_dit=24, vae_steps=2, vae_batch=2, mllm_steps=2, mllm_batch=2, mllm_lr=1e-3,
                    dit1_steps=2, dit2_steps=2, dit_batch=2, dit1_lr=1e-3, dit2_lr=1e-3, sample_steps=2, eval_n=2,
                    eval_seeds=1),
    # what fits about 45 minutes of a shared 2-core CPU (the shipped checkpoint)
    "quick": Recipe("quick", n_sft=6000, n_dit=6000, vae_steps=800, vae_batch=16, mllm_steps=700, mllm_batch=16,
                    mllm_lr=2e-3, dit1_steps=100, dit2_steps=1200, dit_batch=16, dit1_lr=2e-3, dit2_lr=1e-3),
    # the <= 2 h recipe on 2 dedicated cores
    "full": Recipe("full", n_sft=12000, n_dit=12000, vae_steps=1200, vae_batch=16, mllm_steps=1800, mllm_batch=16,
                   mllm_lr=2e-3, dit1_steps=200, dit2_steps=2400, dit_batch=16, dit1_lr=2e-3, dit2_lr=1e-3),
}


def _log(msg: str) -> None:
    print(f"[nano {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _done(out: Path, stage: str) -> bool:
    return (out / f"{stage}.done").is_file()


def _mark(out: Path, stage: str, info: dict) -> None:
    (out / f"{stage}.done").write_text(json.dumps(info, indent=2) + "\n")


def _copy(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)


# ------------------------------------------------------------------------------------------------------- stages
def stage_data(out: Path, r: Recipe, seed: int) -> None:
    from thinkgen.nano.data import write_datasets

    write_datasets(out / "data", r.n_sft, r.n_dit, seed=seed)


def vae_command(out: Path, r: Recipe, seed: int, device: str) -> list[str]:
    return [sys.executable, "-m", "thinkgen.nano.vae_train", "--out", str(out / "vae"), "--preset", r.sizes,
            "--steps", str(r.vae_steps), "--batch-size", str(r.vae_batch), "--seed", str(seed), "--device", device,
            "--check-scenes", "10" if r.sizes == "smoke" else "200"]


def stage_mllm_base(out: Path, r: Recipe, seed: int) -> Path:
    """Random tiny Qwen3-VL + nano tokenizer + processor in ``OUT/mllm/base`` (mllm/, processor/)."""
    from thinkgen.nano.models import build_mllm, build_nano_tokenizer, sizes

    base = out / "mllm" / "base"
    if not (base / "mllm").is_dir():
        tok = build_nano_tokenizer()
        m = build_mllm(tok, sizes(r.sizes), seed=seed)
        tmp = out / "mllm" / ".base.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        m.save_pretrained(tmp / "mllm", tmp / "processor")
        os.replace(tmp, base)
    return base


def stage_mllm(out: Path, r: Recipe, seed: int, device: str, overrides: dict) -> Path:
    from thinkgen.train.config import mllm_sft
    from thinkgen.train.mllm_sft import train_mllm

    base = stage_mllm_base(out, r, seed)
    cfg = mllm_sft(**{**dict(
        model_dir=str(base), data=[str(out / "data" / "sft.jsonl")], output_dir=str(out / "mllm" / "run"),
        seed=seed, lr=r.mllm_lr, warmup_steps=max(1, min(50, r.mllm_steps // 10)), lr_schedule="cosine",
        min_lr_ratio=0.05, max_steps=r.mllm_steps, batch_size=r.mllm_batch, max_seq_len=512,
        max_image_pixels=64 * 64, freeze_vision=False, weight_decay=0.0, device=device, log_every=25,
        save_every=max(100, r.mllm_steps // 4), keep_last=1, shuffle_buffer=2000), **overrides.get("mllm", {})})
    return train_mllm(cfg)


def assemble_base(out: Path, r: Recipe, seed: int) -> Path:
    """Released-layout folder for the DiT trainer: SFT MLLM + trained VAE + random DiT + scheduler."""
    from thinkgen.loading import load_vae_strict
    from thinkgen.mllm import ThinkGenMLLM
    from thinkgen.nano.models import build_dit, nano_defaults, sizes
    from thinkgen.pipeline import ThinkGenPipeline
    from thinkgen.scheduler import ThinkGenScheduler

    root = out / "dit_base"
    if (root / "model_index.json").is_file():
        return root
    sft = out / "mllm" / "run" / "final"
    mllm = ThinkGenMLLM.from_pretrained(sft / "mllm", sft / "processor")
    vae = load_vae_strict(out / "vae" / "vae")
    pipe = ThinkGenPipeline(mllm, build_dit(sizes(r.sizes), seed=seed), vae, ThinkGenScheduler(), name="nano-base")
    pipe.save_pretrained(root)
    write_defaults(root, r)
    return root


def write_defaults(root: Path, r: Recipe) -> None:
    from thinkgen.nano.models import nano_defaults

    idx = json.loads((root / "model_index.json").read_text())
    idx["thinkgen_defaults"] = nano_defaults(r.sample_steps)
    tmp = root / ".model_index.json.tmp"
    tmp.write_text(json.dumps(idx, indent=2) + "\n")
    os.replace(tmp, root / "model_index.json")


def stage_dit(out: Path, r: Recipe, seed: int, device: str, which: str, overrides: dict) -> Path:
    from thinkgen.train.config import stage1, stage2
    from thinkgen.train.dit_trainer import train_dit

    model_dir = assemble_base(out, r, seed) if which == "dit1" else out / "dit1" / "final"
    steps = r.dit1_steps if which == "dit1" else r.dit2_steps
    preset = stage1 if which == "dit1" else stage2
    cfg = preset(**{**dict(
        model_dir=str(model_dir), data=[str(out / "data" / "dit.jsonl")], output_dir=str(out / which), seed=seed,
        lr=r.dit1_lr if which == "dit1" else r.dit2_lr, warmup_steps=max(1, min(50, steps // 10)),
        lr_schedule="constant" if which == "dit1" else "cosine", min_lr_ratio=0.05, max_steps=steps,
        batch_size=r.dit_batch, weight_decay=0.0, max_output_pixels=64 * 64, max_input_pixels=[64 * 64],
        prompt_dropout_prob=0.1, ref_dropout_prob=0.5, feature_cache_dir=str(out / "cache" / "features"),
        latent_cache_dir=str(out / "cache" / "latents"), max_text_tokens=128, device=device, log_every=25,
        save_every=100, keep_last=2, shuffle_buffer=2000, export_full_model=True),
        **overrides.get(which, {})})
    return train_dit(cfg)


def stage_final(out: Path, r: Recipe) -> Path:
    from thinkgen.pipeline import ThinkGenPipeline

    pipe = ThinkGenPipeline.from_pretrained(out / "dit2" / "final")
    pipe = ThinkGenPipeline(pipe.mllm, pipe.transformer, pipe.vae, pipe.scheduler, name="thinkgen-nano")
    pipe.save_pretrained(out / "final")
    write_defaults(out / "final", r)
    return out / "final"


def checkpoint_mb(root: Path) -> float:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 2**20


# ------------------------------------------------------------------------------------------------------- main
def _parse_sets(items: list[str]) -> tuple[dict, dict]:
    """``--set mllm_steps=100`` (recipe fields) or ``--set dit2.lr=1e-3`` (trainer config fields of a stage)."""
    import yaml

    recipe, trainer = {}, {}
    for it in items:
        if "=" not in it:
            raise SystemExit(f"--set needs KEY=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        v = yaml.safe_load(v)
        if "." in k:
            st, f = k.split(".", 1)
            trainer.setdefault(st, {})[f] = v
        else:
            recipe[k] = v
    return recipe, trainer


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="thinkgen train nano", description="Train ThinkGen-Nano from scratch.")
    p.add_argument("--out", required=True, type=Path, help="run folder (resumable: finished stages are skipped)")
    p.add_argument("--preset", default="quick", choices=sorted(RECIPES), help="smoke (seconds), quick, full")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2, help="2: train the VAE in a subprocess next to the MLLM SFT")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    p.add_argument("--stages", default=",".join(STAGES), help="comma list of stages to run (default: all)")
    p.add_argument("--set", dest="sets", action="append", default=[],
                   help="override a recipe field (mllm_steps=100) or a trainer field (dit2.lr=1e-3)")
    p.add_argument("--skip-eval", action="store_true")
    a = p.parse_args(argv)
    rset, tset = _parse_sets(a.sets)
    r = replace(RECIPES[a.preset], **rset)
    out = a.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.json").write_text(json.dumps({"preset": a.preset, **asdict(r), "overrides": tset}, indent=2) + "\n")
    want = [s for s in a.stages.split(",") if s]
    if a.skip_eval and "eval" in want:
        want.remove("eval")
    if a.threads:
        torch.set_num_threads(a.threads)
    times: dict[str, float] = {}

    def run(stage: str, fn) -> None:
        if stage not in want:
            return
        if _done(out, stage):
            _log(f"{stage}: done already, skipped")
            return
        _log(f"{stage}: start")
        t = time.time()
        res = fn()
        times[stage] = round(time.time() - t, 1)
        _mark(out, stage, {"seconds": times[stage], "result": str(res) if res is not None else None})
        _log(f"{stage}: finished in {times[stage]} s")

    run("data", lambda: stage_data(out, r, a.seed))

    vae_proc = None
    if "vae" in want and not _done(out, "vae"):
        cmd = vae_command(out, r, a.seed, a.device)
        if a.jobs >= 2 and "mllm" in want and not _done(out, "mllm") and a.device == "cpu":
            env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
            _log("vae: start (subprocess, 1 thread, log in vae.log)")
            vae_t0 = time.time()
            (out / "vae").mkdir(exist_ok=True)
            vae_proc = subprocess.Popen(cmd, env=env, stdout=open(out / "vae.log", "w"), stderr=subprocess.STDOUT)
            torch.set_num_threads(1)
        else:
            run("vae", lambda: subprocess.run(cmd, check=True))
    run("mllm", lambda: stage_mllm(out, r, a.seed, a.device, tset))
    if vae_proc is not None:
        rc = vae_proc.wait()
        if rc != 0:
            raise SystemExit(f"VAE training failed (exit {rc}); see {out / 'vae.log'}")
        times["vae"] = round(time.time() - vae_t0, 1)
        _mark(out, "vae", {"seconds": times["vae"], "result": str(out / "vae" / "vae")})
        _log(f"vae: finished in {times['vae']} s")
        torch.set_num_threads(a.threads or os.cpu_count() or 1)
    run("dit1", lambda: stage_dit(out, r, a.seed, a.device, "dit1", tset))
    run("dit2", lambda: stage_dit(out, r, a.seed, a.device, "dit2", tset))
    run("final", lambda: stage_final(out, r))
    if "final" in want and (out / "final").is_dir():
        _log(f"final checkpoint {out / 'final'}: {checkpoint_mb(out / 'final'):.1f} MB")

    def _eval():
        from thinkgen.nano.evaluate import main as eval_main

        return eval_main(["--model", str(out / "final"), "--out", str(out / "eval"), "--seeds", str(r.eval_seeds),
                          "--n-per-family", str(r.eval_n), "--device", a.device])

    run("eval", _eval)
    (out / "times.json").write_text(json.dumps(
        {s: json.loads((out / f"{s}.done").read_text()).get("seconds") for s in STAGES if _done(out, s)},
        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
