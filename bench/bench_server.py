"""Throughput and latency of ``thinkgen serve`` under concurrent clients, with and without request batching.

Starts the real server (uvicorn, the app of ``thinkgen.server.create_app``, no UI) in this process on a free port, then
``--clients`` threads each send ``--requests`` image-generation requests over HTTP (one image each, distinct prompts
and seeds, the same settings, so they can merge) and wait for the reply. Repeated for every ``--max-batch-images``
value (1 = no batching). Reports images/s over the whole run and per-request latency (p50 / p95), and the server's own
count of pipeline calls. A benchmark script, not a test.

    python bench/bench_server.py --out bench/results/server_nano_cpu.json
    python bench/bench_server.py --model /path/to/ThinkGen --device cuda --dtype bfloat16 --size 1024x1024 --steps 50
"""
import argparse
import json
import os
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPTS = ["a red circle", "two blue squares", "a green star left of a yellow triangle", "three purple diamonds",
           "a small orange circle above a large blue square", "a red square right of a green circle"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_one(pipe, max_batch: int, args) -> dict:
    import httpx
    import uvicorn

    from thinkgen.server import create_app

    port = _free_port()
    app = create_app(pipe, max_batch_images=max_batch, max_wait_s=args.wait_ms / 1000, max_queue=1024, ui=False)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline:
            raise SystemExit("the server did not start within 60 s")
        time.sleep(0.05)
    body = {"size": args.size, "num_inference_steps": args.steps, "think": args.think}
    with httpx.Client(timeout=600) as c:                                   # warm-up: one request, not timed
        c.post(f"{base}/v1/images/generations", json={"prompt": PROMPTS[0], "seed": 0, **body}).raise_for_status()
    latencies: list[float] = []
    lock = threading.Lock()
    errors: list[str] = []

    def client(k: int):
        with httpx.Client(timeout=600) as c:
            for i in range(args.requests):
                t = time.perf_counter()
                r = c.post(f"{base}/v1/images/generations",
                           json={"prompt": PROMPTS[(k + i) % len(PROMPTS)], "seed": 1000 * k + i, **body})
                dt = time.perf_counter() - t
                with lock:
                    (latencies.append(dt) if r.status_code == 200 else errors.append(r.text[:200]))

    stats0 = dict(app.state.queue.stats)
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    stats = {k: app.state.queue.stats[k] - stats0.get(k, 0) for k in ("calls", "jobs", "images")}
    stats["largest_batch"] = app.state.queue.stats["largest_batch"]
    server.should_exit = True
    thread.join(30)
    if errors:
        raise SystemExit(f"{len(errors)} requests failed, e.g. {errors[0]}")
    lat = sorted(latencies)
    return {"max_batch_images": max_batch, "requests": len(lat), "wall_s": round(wall, 2),
            "images_per_s": round(len(lat) / wall, 3), "latency_p50_s": round(statistics.median(lat), 3),
            "latency_p95_s": round(lat[min(len(lat) - 1, int(0.95 * len(lat)))], 3),
            "pipeline_calls": stats["calls"], "mean_prompts_per_call": round(stats["jobs"] / max(1, stats["calls"]), 2),
            "largest_batch": stats["largest_batch"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="checkpoint (default: the shipped nano)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=6, help="requests per client")
    ap.add_argument("--max-batch-images", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--wait-ms", type=float, default=10.0)
    ap.add_argument("--size", default="auto")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--think", default="off", choices=["off", "on"])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", type=Path, default=None, help="write the results JSON here (atomically)")
    args = ap.parse_args(argv)
    if args.clients < 1 or args.requests < 1 or min(args.max_batch_images) < 1:
        ap.error("--clients, --requests and --max-batch-images must be >= 1")

    import torch

    from bench.provenance import provenance, write_result
    from thinkgen.pipeline import ThinkGenPipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = ThinkGenPipeline.from_pretrained(args.model, device=args.device, **({"dtype": args.dtype} if args.dtype else {}))
    rows = []
    for b in args.max_batch_images:
        rows.append(run_one(pipe, b, args))
        print(json.dumps(rows[-1]), flush=True)
    result = {"meta": {**provenance(argv), "model": args.model or "shipped nano", "device": args.device,
                       "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                       "clients": args.clients, "requests_per_client": args.requests, "size": args.size,
                       "steps": args.steps or pipe.defaults.get("num_inference_steps"), "think": args.think,
                       "wait_ms": args.wait_ms},
              "rows": rows}
    if args.out:
        write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
