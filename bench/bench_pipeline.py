"""Per-stage timing of the ThinkGen pipeline (a benchmark, not a test).

Stages: think decoding (tokens/s), DiT forward (ms, batch 1 and the CFG batch), VAE decode (ms), end to end (s).

    python bench/bench_pipeline.py --model /path/to/ThinkGen --device cuda --dtype bfloat16
    python bench/bench_pipeline.py --random-weights full --device cuda --dtype bfloat16   # Qwen3-VL-8B shape + 3.98B DiT
    python bench/bench_pipeline.py --random-weights tiny                                   # CPU smoke run
    python bench/bench_pipeline.py                                                         # the shipped nano model

Prints a table and writes JSON (machine, versions, date, command) to bench/results/.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _timeit(fn, device, warmup=1, iters=3):
    for _ in range(warmup):
        fn()
    _sync(device)
    ts = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        _sync(device)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def build_full_random(device, dtype):
    """Full-size geometry with random weights: Qwen3-VL-8B-shaped MLLM, the 3.98B DiT, the FLUX VAE."""
    from diffusers import AutoencoderKL
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from thinkgen.mllm import ThinkGenMLLM
    from thinkgen.models.dit import ThinkGenTransformer2DModel
    from thinkgen.pipeline import ThinkGenPipeline
    from thinkgen.processor import ThinkGenProcessor
    from thinkgen.tokenization import IMAGE_PAD, VIDEO_PAD, VISION_END, VISION_START, qwen3_tokenizer

    tok = qwen3_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in (IMAGE_PAD, VIDEO_PAD, VISION_START, VISION_END)}
    cfg = Qwen3VLConfig(
        text_config=dict(vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=262144,
                         rope_parameters=dict(rope_type="default", rope_theta=5e6, mrope_section=[24, 20, 20],
                                              mrope_interleaved=True)),
        vision_config=dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=4096,
                           patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=2304,
                           deepstack_visual_indexes=[8, 16, 24]),
        image_token_id=ids[IMAGE_PAD], video_token_id=ids[VIDEO_PAD],
        vision_start_token_id=ids[VISION_START], vision_end_token_id=ids[VISION_END],
    )
    with torch.device(device):
        torch.set_default_dtype(dtype)
        try:
            model = Qwen3VLForConditionalGeneration(cfg)
            dit = ThinkGenTransformer2DModel(hidden_size=2520, num_layers=32, num_refiner_layers=2,
                                             num_attention_heads=21, num_kv_heads=7, axes_dim_rope=(40, 40, 40),
                                             axes_lens=(1024, 1664, 1664), text_feat_dim=4096)
            vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16,
                                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                                block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32,
                                use_quant_conv=False, use_post_quant_conv=False,
                                scaling_factor=0.3611, shift_factor=0.1159)
        finally:
            torch.set_default_dtype(torch.float32)
    gc = model.generation_config
    gc.eos_token_id, gc.pad_token_id = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    mllm = ThinkGenMLLM(model.eval(), ThinkGenProcessor(tok))
    return ThinkGenPipeline(mllm, dit.eval().requires_grad_(False), vae.eval().requires_grad_(False), name="random-full")


def _stages(pipe, prompts, H, W, steps, args, res) -> None:
    """Think decoding, DiT forward (batch 1 and the CFG batch), VAE decode, then the end-to-end runs."""
    from thinkgen.models.vae import decode_latents, vae_scale_factor

    dev = args.device
    # -- think decoding (forced length: random weights never close </think> by themselves)
    mllm = pipe.mllm
    def think():
        return mllm.think(prompts, None, mode="think", max_think_tokens=args.think_tokens, max_answer_tokens=8,
                          do_sample=True, seed=list(range(len(prompts))))
    t = _timeit(think, dev, warmup=1, iters=max(1, args.iters // 2))
    enc = think()
    n_tok = sum(len(g) for g in getattr(enc, "generated_ids", []) or []) or args.think_tokens * len(prompts)
    res["think_tokens"] = n_tok
    res["think_s"] = t
    res["think_tokens_per_s"] = n_tok / t

    # -- DiT forward: batch 1 and the CFG batch (2 x batch)
    f = vae_scale_factor(pipe.vae)
    C = pipe.transformer.config.in_channels
    feats = pipe.mllm.encode_instructions(prompts, [0] * len(prompts))
    x = torch.randn(1, C, H // f, W // f, device=dev, dtype=pipe.dtype)
    fe, ma = feats.features[:1].to(dev, pipe.dtype), feats.mask[:1].to(dev)
    with torch.no_grad():
        res["dit_forward_ms_b1"] = 1e3 * _timeit(
            lambda: pipe.transformer(x, torch.full((1,), 0.5, device=dev), fe, ma), dev, iters=args.iters)
        x2, fe2, ma2 = x.repeat(2, 1, 1, 1), fe.repeat(2, 1, 1), ma.repeat(2, 1)
        res["dit_forward_ms_b2"] = 1e3 * _timeit(
            lambda: pipe.transformer(x2, torch.full((2,), 0.5, device=dev), fe2, ma2), dev, iters=args.iters)
        z = torch.randn(1, C, H // f, W // f, device=dev, dtype=pipe.vae.dtype)
        res["vae_decode_ms"] = 1e3 * _timeit(lambda: decode_latents(pipe.vae, z), dev, iters=args.iters)

    _end_to_end(pipe, prompts, H, W, steps, args, res)


def _end_to_end(pipe, prompts, H, W, steps, args, res) -> None:
    """One call with think off and one with think on (the whole pipeline, offload copies included)."""
    dev = args.device
    # -- end to end, think off and on
    def e2e(think_mode):
        return pipe(prompts, think=think_mode, height=H, width=W, num_inference_steps=steps, seed=0,
                    max_think_tokens=args.think_tokens, max_answer_tokens=32)
    res["e2e_s_think_off"] = _timeit(lambda: e2e("off"), dev, warmup=0, iters=1)
    res["e2e_s_think_on"] = _timeit(lambda: e2e("on"), dev, warmup=0, iters=1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="checkpoint folder or hub id (default: shipped nano)")
    ap.add_argument("--random-weights", choices=["tiny", "full"], default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--height", type=int, default=None)
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None, help="denoising steps for the end-to-end run")
    ap.add_argument("--think-tokens", type=int, default=64, help="think budget for the decoding measurement")
    ap.add_argument("--batch", type=int, default=1, help="prompts per call")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--tag", default=None)
    ap.add_argument("--compile", action="store_true",
                    help="pipe.compile() (torch.compile of the DiT blocks); one untimed end-to-end call compiles first")
    ap.add_argument("--cpu-offload", action="store_true",
                    help="enable_model_cpu_offload(device): only the end-to-end runs and the peak memory are measured")
    ap.add_argument("--quantize", default=None, choices=["int8", "float8", "int4"],
                    help="pipe.quantize(...) (weight-only, optimum-quanto) before any timing")
    args = ap.parse_args(argv)
    for name in ("batch", "iters", "think_tokens"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1")

    from thinkgen.pipeline import ThinkGenPipeline
    from thinkgen.testing import build_tiny_pipeline

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
        args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")]
    t0 = time.perf_counter()
    if args.random_weights == "full":
        pipe = build_full_random(args.device, dtype)
        default_side, default_steps = 1024, 50
    elif args.random_weights == "tiny":
        pipe = build_tiny_pipeline().to(args.device)
        default_side, default_steps = 64, 8
    else:
        pipe = ThinkGenPipeline.from_pretrained(args.model, dtype=dtype, device=args.device)
        d = pipe.defaults   # the checkpoint's own call defaults (model_index.json "thinkgen_defaults")
        default_side, default_steps = int(d.get("height", 1024)), int(d.get("num_inference_steps", 50))
    if args.quantize:
        pipe.quantize(args.quantize)
    if args.cpu_offload:
        pipe.enable_model_cpu_offload(args.device)
    load_s = time.perf_counter() - t0
    H = args.height or default_side
    W = args.width or default_side
    steps = args.steps or default_steps
    prompts = ["two red circles left of a blue square"] * args.batch
    res: dict = {"load_s": load_s}
    if args.compile:   # compile outside every timing: one end-to-end call in each think mode
        pipe.compile()
        t0 = time.perf_counter()
        for mode in ("off", "on"):
            pipe(prompts, think=mode, height=H, width=W, num_inference_steps=steps, seed=0,
                 max_think_tokens=args.think_tokens, max_answer_tokens=32)
        _sync(args.device)
        res["compile_warmup_s"] = time.perf_counter() - t0
    if args.device.startswith("cuda"):   # peak memory of inference alone (the random build can peak higher)
        torch.cuda.synchronize()
        res["resident_gpu_mem_gib"] = torch.cuda.memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()

    if args.cpu_offload:
        _end_to_end(pipe, prompts, H, W, steps, args, res)
    else:
        _stages(pipe, prompts, H, W, steps, args, res)
    dev = args.device
    if dev.startswith("cuda"):
        res["peak_gpu_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30

    meta = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "machine": platform.platform(), "processor": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(), "torch": torch.__version__,
        "model": pipe.name, "device": dev, "dtype": str(dtype).replace("torch.", ""),
        "height": H, "width": W, "steps": steps, "batch": args.batch, "think_budget": args.think_tokens,
        "cpu_offload": args.cpu_offload, "compile": args.compile, "quantize": args.quantize,
        "dit_params": sum(p.numel() for p in pipe.transformer.parameters()),
        "mllm_params": sum(p.numel() for p in pipe.mllm.model.parameters()),
    }
    print(f"\n{'stage':<28}{'value':>14}")
    for k, v in res.items():
        print(f"{k:<28}{v:>14.3f}" if isinstance(v, float) else f"{k:<28}{v:>14}")
    args.out.mkdir(parents=True, exist_ok=True)
    tag = args.tag or f"{args.random_weights or Path(str(pipe.name)).name or 'model'}-{dev.split(':')[0]}"
    path = args.out / f"pipeline-{tag}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"meta": meta, "results": res}, indent=2) + "\n")
    tmp.replace(path)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
