"""Weight memory of the full ThinkGen geometry under each quantization scheme, computed from shapes on the meta device.

Builds the release's geometry (Qwen3-VL-8B-shaped MLLM, the 3.98B DiT, the FLUX VAE; ``bench_pipeline.build_full_random``)
without allocating it and applies ``thinkgen.quantization.planned_bytes``, whose byte count equals ``module_bytes``
after a real ``pipe.quantize`` (tests/test_quantization.py checks that on the nano model for int8, float8, int4).
Weights only: activations, the KV cache and the CUDA context come on top. A benchmark script, not a test.

    python bench/quant_footprint.py --out bench/results/quant_footprint_full.json
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    import torch
    from bench_pipeline import build_full_random

    from bench.provenance import provenance, write_result
    from thinkgen.quantization import SCHEMES, planned_bytes

    pipe = build_full_random("meta", getattr(torch, args.dtype))
    gib = 2 ** 30
    rows = {}
    for comp, module in (("mllm", pipe.mllm.model), ("transformer", pipe.transformer)):
        base = sum(p.numel() * p.element_size() for p in module.parameters())
        base += sum(b.numel() * b.element_size() for b in module.buffers())
        rows[comp] = {"params": sum(p.numel() for p in module.parameters()), "none_gib": round(base / gib, 3),
                      **{f"{w}_gib": round(planned_bytes(module, comp, w) / gib, 3) for w in SCHEMES}}
    vae = sum(p.numel() * p.element_size() for p in pipe.vae.parameters()) / gib
    rows["vae"] = {"none_gib": round(vae, 3)}
    rows["total"] = {k: round(rows["mllm"][k] + rows["transformer"][k] + vae, 3)
                     for k in ("none_gib", *(f"{w}_gib" for w in SCHEMES))}
    print(f"{'':12}{'none':>9}" + "".join(f"{w:>9}" for w in SCHEMES) + "   (GiB of weights, " + args.dtype + ")")
    for comp in ("mllm", "transformer", "total"):
        r = rows[comp]
        print(f"{comp:12}{r['none_gib']:>9.2f}" + "".join(f"{r[f'{w}_gib']:>9.2f}" for w in SCHEMES))
    if args.out:
        write_result(args.out, {"meta": {**provenance(argv), "dtype": args.dtype,
                                         "note": "weights only, computed from shapes (planned_bytes)"},
                                "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
