"""``thinkgen`` command line: generate, edit, chat, info, train, eval.

Exit codes: 0 ok, 2 bad input or config, 3 checkpoint problem, 1 anything else.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

from .errors import CheckpointError, ConfigError, InvalidInputError, ThinkgenError

EPILOG_GENERATE = """examples:
  thinkgen generate "two red circles left of a blue square" --think --out outputs/
  thinkgen generate "a cat" "a dog" --model JSYuuu/ThinkGen --steps 50 --height 1024 --width 1024 --out outputs/
"""
EPILOG_EDIT = """examples:
  thinkgen edit input.png "make the circle green" --out outputs/
  thinkgen edit a.png b.png "put the object of the first image into the second" --think --out outputs/
"""

EPILOG_SERVE = """examples:
  thinkgen serve                                  # ThinkGen-Nano on 127.0.0.1:8000, UI at http://127.0.0.1:8000/ui
  thinkgen serve --model JSYuuu/ThinkGen --host 0.0.0.0 --max-batch-images 16 --compile
  curl -s localhost:8000/v1/images/generations -H 'content-type: application/json' \\
       -d '{"prompt": "two red circles left of a blue square", "think": "on", "n": 2, "seed": 0}'
"""


def _slug(text: str, n: int = 40) -> str:
    s = re.sub(r"[^A-Za-z0-9]+", "-", text.strip().lower()).strip("-")
    return (s[:n].rstrip("-") or "image")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="checkpoint folder or Hugging Face hub id (default: the shipped ThinkGen-Nano model)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="weights dtype (default: bfloat16 on GPU, float32 on CPU)")
    p.add_argument("--cpu-offload", action="store_true",
                   help="keep the models on the CPU and move each to --device only for its stage (less GPU memory)")
    p.add_argument("--quantize", default=None, choices=["int8", "float8", "int4"],
                   help="weight-only quantization of the MLLM and the DiT (less memory; needs thinkgen[quant])")
    p.add_argument("--lora", action="append", default=None, metavar="DIR",
                   help="merge a LoRA adapter folder (a trainer's final/transformer_lora or final/mllm_lora); repeatable")
    p.add_argument("--lora-scale", type=float, default=1.0, help="strength of every --lora adapter (default 1)")


def _add_gen_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the DiT blocks: a one-off compile, then faster sampling (pays off over many images)")
    p.add_argument("--out", required=True, type=Path, help="output folder; receives NAME.png and NAME.json per image")
    p.add_argument("--name", default=None, help="file name stem (default: derived from the prompt)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--think", dest="think", action="store_const", const="on",
                   help="let the MLLM reason inside <think>...</think> before writing the instruction")
    g.add_argument("--think-mode", dest="think", choices=["off", "on", "auto"],
                   help="off: use the prompt as the instruction (pseudo-CoT); on: always think; auto: the model decides")
    p.set_defaults(think="off")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's; 50 for the release)")
    p.add_argument("--height", type=int, default=None, help="output height in pixels (default: the model's native size)")
    p.add_argument("--width", type=int, default=None, help="output width in pixels")
    p.add_argument("--text-guidance", type=float, default=None, help="text CFG scale (1 = off; default: the model's, 4.0 for the release)")
    p.add_argument("--image-guidance", type=float, default=None, help="reference-image CFG scale for editing (default 2.0)")
    p.add_argument("--cfg-range", type=float, nargs=2, default=None, metavar=("START", "END"),
                   help="apply CFG only on steps whose fraction i/N lies in [START, END]")
    p.add_argument("--negative-prompt", default=None, help="negative prompt (default: the reference one)")
    p.add_argument("--num-images", type=int, default=1, help="images per prompt")
    p.add_argument("--seed", type=int, default=0, help="noise and think seed (image j of a prompt uses seed + j)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per pipeline call (memory vs speed)")
    p.add_argument("--max-think-tokens", type=int, default=None, help="think budget in tokens")
    p.add_argument("--max-answer-tokens", type=int, default=None,
                   help="budget for the instruction written after </think> (default 256)")
    p.add_argument("--quiet", action="store_true", help="no progress bars, no thoughts printed")


def _device_dtype(args):
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    return device, dtype


def _load(args):
    from .pipeline import ThinkGenPipeline

    device, dtype = _device_dtype(args)
    if getattr(args, "quantize", None):        # fail before loading anything
        from .quantization import require_quanto
        require_quanto()
    for path in getattr(args, "lora", None) or []:
        if not Path(path).is_dir():
            raise InvalidInputError(f"--lora {path} is not a folder; pass a trainer's final/transformer_lora or "
                                    "final/mllm_lora")
    pipe = ThinkGenPipeline.from_pretrained(args.model, dtype=dtype,
                                            device="cpu" if getattr(args, "cpu_offload", False) else device)
    for path in getattr(args, "lora", None) or []:
        pipe.load_lora(path, scale=args.lora_scale)
    if getattr(args, "quantize", None):
        pipe.quantize(args.quantize)
    if getattr(args, "cpu_offload", False):
        pipe.enable_model_cpu_offload(device)
    return pipe.compile() if getattr(args, "compile", False) else pipe


def _run_generation(args, prompts: list[str], images, *, seeds: list[int] | None = None,
                    stems: list[str] | None = None) -> int:
    """Render ``prompts`` in pipeline calls of ``--batch-size`` prompts, writing each call's images before the next.

    ``seeds``/``stems``: per prompt (a prompts file); otherwise every prompt uses ``--seed`` and names follow the
    prompt text."""
    from .images import save_png_atomic
    from .pipeline import _as_prompts

    _as_prompts(prompts)  # validate before loading anything
    if args.batch_size < 1:
        raise InvalidInputError(f"--batch-size must be >= 1, got {args.batch_size}")
    t0 = time.perf_counter()
    pipe = _load(args)
    load_s = time.perf_counter() - t0
    kwargs = dict(
        think=args.think,
        height=args.height,
        width=args.width,
        num_inference_steps=args.steps,
        text_guidance_scale=args.text_guidance,
        image_guidance_scale=args.image_guidance,
        cfg_range=tuple(args.cfg_range) if args.cfg_range is not None else None,
        negative_prompt=args.negative_prompt,
        num_images_per_prompt=args.num_images,
        max_think_tokens=args.max_think_tokens,
        max_answer_tokens=args.max_answer_tokens,
        progress=not args.quiet,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    n_per = args.num_images
    multi = len(prompts) * n_per > 1
    written = []
    for start in range(0, len(prompts), args.batch_size):
        idx = list(range(start, min(start + args.batch_size, len(prompts))))
        batch = [prompts[b] for b in idx]
        seed = [seeds[b] for b in idx] if seeds is not None else args.seed
        out = pipe(batch if len(batch) > 1 else batch[0], images=images, seed=seed, **kwargs)
        for k, img in enumerate(out.images):
            i, j = divmod(k, n_per)
            b = idx[i]
            if stems is not None:
                stem = stems[b] + (f"-{j}" if n_per > 1 else "")
            else:
                stem = args.name or _slug(prompts[b])
                if multi:
                    stem = f"{stem}-{b}-{j}" if args.name else f"{stem}-{j}" if len(prompts) == 1 else f"{b:03d}-{stem}-{j}"
            meta = {
                "prompt": prompts[b],
                "input_images": [str(p) for p in (images or [])] if isinstance(images, list) else [],
                "thoughts": out.thoughts[i],
                "instruction": out.instructions[i],
                "think_finished": out.finished[i],
                "seed": out.seeds[k],
                "settings": {k2: (list(v) if isinstance(v, tuple) else v) for k2, v in out.settings.items()},
                "model": pipe.name,
                "timings_s": {"load": round(load_s, 3), **{k2: round(v, 3) for k2, v in out.timings.items()}},
                "size": list(img.size),
            }
            png, side = args.out / f"{stem}.png", args.out / f"{stem}.json"
            save_png_atomic(img, png, text={"thinkgen": json.dumps({"prompt": prompts[b], "seed": out.seeds[k]})})
            tmp = side.with_name(f".{side.name}.tmp-{os.getpid()}")
            tmp.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
            os.replace(tmp, side)
            written.append(png)
        if not args.quiet:
            for i, b in enumerate(idx):
                if args.think != "off":
                    print(f"[{b}] thoughts: {out.thoughts[i].strip()}")
                print(f"[{b}] instruction: {out.instructions[i].strip()}")
        for p in written[-len(out.images):]:
            print(f"wrote {p}")
    return 0


def read_prompts_file(path: Path, base_seed: int, n_per: int) -> tuple[list[str], list[int], list[str]]:
    """A .txt file (one prompt per non-empty line) or .jsonl ({"prompt", optional "seed" and "name"} per line) ->
    prompts, seeds (default: --seed + i * images per prompt, so no two lines share noise) and file stems."""
    if not path.is_file():
        raise InvalidInputError(f"--prompts-file {path} does not exist")
    prompts, seeds, stems = [], [], []
    lines = path.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        i = len(prompts)
        if path.suffix == ".jsonl":
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InvalidInputError(f"{path}:{n} is not JSON ({e.msg}); write one object per line") from None
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                raise InvalidInputError(f'{path}:{n} needs a "prompt" string, e.g. {{"prompt": "a red apple"}}')
            seed = row.get("seed", base_seed + i * n_per)
            if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
                raise InvalidInputError(f"{path}:{n}: seed must be an integer >= 0, got {seed!r}")
            name = row.get("name")
            if name is not None and (not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9._-]{1,100}", name)):
                raise InvalidInputError(f"{path}:{n}: name must be 1-100 of A-Z a-z 0-9 . _ -, got {name!r}")
            prompts.append(row["prompt"])
            seeds.append(seed)
            stems.append(name or f"{i:05d}-{_slug(row['prompt'])}")
        else:
            prompts.append(line.strip())
            seeds.append(base_seed + i * n_per)
            stems.append(f"{i:05d}-{_slug(line)}")
    if not prompts:
        raise InvalidInputError(f"--prompts-file {path} has no prompts")
    if len(set(stems)) != len(stems):
        dup = next(s for s in stems if stems.count(s) > 1)
        raise InvalidInputError(f"--prompts-file {path}: the name {dup!r} is used twice; names must be unique")
    return prompts, seeds, stems


def cmd_generate(args) -> int:
    if args.prompts_file is None:
        if not args.prompt:
            raise InvalidInputError("give one or more prompts, or --prompts-file FILE")
        return _run_generation(args, args.prompt, None)
    if args.prompt:
        raise InvalidInputError("give prompts either on the command line or with --prompts-file, not both")
    if args.name is not None:
        raise InvalidInputError("--name applies to command-line prompts; name lines of a .jsonl file with \"name\"")
    prompts, seeds, stems = read_prompts_file(args.prompts_file, args.seed, args.num_images)
    suffixes = [f"-{j}" for j in range(args.num_images)] if args.num_images > 1 else [""]
    todo = [i for i, st in enumerate(stems)
            if not all((args.out / f"{st}{sx}.png").is_file() and (args.out / f"{st}{sx}.json").is_file()
                       for sx in suffixes)]
    if len(todo) < len(prompts):
        print(f"skipping {len(prompts) - len(todo)} prompts whose images are already in {args.out}")
    if not todo:
        return 0
    return _run_generation(args, [prompts[i] for i in todo], None, seeds=[seeds[i] for i in todo],
                           stems=[stems[i] for i in todo])


def cmd_edit(args) -> int:
    if len(args.inputs) < 2:
        raise InvalidInputError("edit needs at least one input image and an instruction: thinkgen edit IMAGE [IMAGE...] INSTRUCTION")
    *images, instruction = args.inputs
    return _run_generation(args, [instruction], list(images))


def cmd_chat(args) -> int:
    pipe = _load(args)
    if args.message is not None:
        print(pipe.chat(args.message, images=args.image, max_new_tokens=args.max_new_tokens))
        return 0
    history = []
    print("thinkgen chat: empty line or Ctrl-D to quit")
    images = args.image
    while True:
        try:
            line = input("> ").strip()
        except EOFError:
            break
        if not line:
            break
        history.append({"role": "user", "content": line})
        reply = pipe.chat(history, images=images, max_new_tokens=args.max_new_tokens)
        history.append({"role": "assistant", "content": reply})
        print(reply)
    return 0


def cmd_serve(args) -> int:
    from .server import require_serve_extra, serve

    require_serve_extra(ui=not args.no_ui)      # before loading the model
    if not 1 <= args.port <= 65535:
        raise InvalidInputError(f"--port must be in [1, 65535], got {args.port}")
    if not args.max_request_mb > 0:
        raise InvalidInputError(f"--max-request-mb must be > 0, got {args.max_request_mb}")
    api_key = None
    if args.api_key_env is not None:
        api_key = os.environ.get(args.api_key_env, "")
        if len(api_key) < 8:
            raise InvalidInputError(f"--api-key-env {args.api_key_env}: that environment variable must hold a key of at "
                                    "least 8 characters (export it before starting the server)")
    pipe = _load(args)
    serve(pipe, host=args.host, port=args.port, model_name=args.served_name, api_key=api_key,
          max_batch_images=args.max_batch_images,
          max_wait_s=args.batch_wait_ms / 1000.0, max_queue=args.max_queue,
          max_request_bytes=int(args.max_request_mb * 1024 * 1024), ui=not args.no_ui)
    return 0


def cmd_info(args) -> int:
    import torch

    from .pipeline import default_model_path
    from .loading import resolve_model_path

    root = resolve_model_path(args.model) if args.model else default_model_path()
    info = {"model": str(root)}
    idx = root / "model_index.json"
    if not idx.is_file():
        raise CheckpointError(f"{root} has no model_index.json; it is not a ThinkGen checkpoint folder")
    info["model_index"] = json.loads(idx.read_text())
    for comp, fname in (("transformer", "config.json"), ("vae", "config.json"), ("scheduler", "scheduler_config.json")):
        f = root / comp / fname
        if f.is_file():
            cfg = json.loads(f.read_text())
            info[comp] = {k: v for k, v in cfg.items() if not k.startswith("_")}
    mcfg = root / "mllm" / "config.json"
    if mcfg.is_file():
        cfg = json.loads(mcfg.read_text())
        tc = cfg.get("text_config", {})
        info["mllm"] = {"architectures": cfg.get("architectures"), "hidden_size": tc.get("hidden_size"),
                        "num_hidden_layers": tc.get("num_hidden_layers"), "vocab_size": tc.get("vocab_size")}
    sizes = {}
    for comp in ("mllm", "transformer", "vae"):
        sizes[comp] = sum(p.stat().st_size for p in (root / comp).glob("*.safetensors"))
    info["weights_bytes"] = sizes
    info["torch"] = torch.__version__
    info["cuda_available"] = torch.cuda.is_available()
    print(json.dumps(info, indent=2))
    return 0


def cmd_train(args, rest) -> int:
    if args.what == "sepgrpo":
        from .rl.sepgrpo import main as sepgrpo_main
        return sepgrpo_main(rest)
    if args.what == "nano":
        from .nano.train import main as nano_main
        return nano_main(rest)
    from .train.cli import main_train
    return main_train([args.what, *rest])


def cmd_eval(args, rest) -> int:
    if args.what == "nano":
        from .nano.evaluate import main as eval_main
        return eval_main(rest)
    from .evals import main as bench_main
    return bench_main([args.what, *rest])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="thinkgen",
        description="ThinkGen: a multimodal LLM thinks, writes an instruction, and a diffusion transformer draws it. "
                    "Without --model the shipped ThinkGen-Nano model (CPU-friendly, 64x64 shape world) is used.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    g = sub.add_parser("generate", help="text-to-image", epilog=EPILOG_GENERATE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("prompt", nargs="*", help="one or more prompts (each one image set)")
    g.add_argument("--prompts-file", type=Path, default=None,
                   help="many prompts: a .txt file (one per line) or .jsonl ({\"prompt\", \"seed\", \"name\"} per line); "
                        "prompts whose outputs exist are skipped, so a rerun resumes")
    _add_model_args(g)
    _add_gen_args(g)
    g.set_defaults(func=cmd_generate)

    e = sub.add_parser("edit", help="edit reference image(s) by an instruction", epilog=EPILOG_EDIT,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("inputs", nargs="+", metavar="IMAGE... INSTRUCTION", help="1-5 input images, then the instruction")
    _add_model_args(e)
    _add_gen_args(e)
    e.set_defaults(func=cmd_edit)

    c = sub.add_parser("chat", help="ask the MLLM about images (image understanding)")
    c.add_argument("message", nargs="?", default=None, help="one question; omit for an interactive session")
    c.add_argument("--image", action="append", default=None, help="an image to ask about (repeatable)")
    c.add_argument("--max-new-tokens", type=int, default=512)
    _add_model_args(c)
    c.set_defaults(func=cmd_chat)

    s = sub.add_parser("serve", help="HTTP server: OpenAI-compatible image and chat API with batching, and a web UI",
                       epilog=EPILOG_SERVE, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_model_args(s)
    s.add_argument("--compile", action="store_true", help="torch.compile the DiT blocks (pays off on a long-lived server)")
    s.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0: every interface)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--served-name", default=None, help="the model id clients send and /v1/models lists "
                                                       "(default: the checkpoint's name)")
    s.add_argument("--max-batch-images", type=int, default=8,
                   help="most images one merged pipeline call renders (1: no batching)")
    s.add_argument("--batch-wait-ms", type=float, default=10.0,
                   help="how long the oldest queued request waits for compatible ones to merge with")
    s.add_argument("--max-queue", type=int, default=64, help="requests waiting beyond this get HTTP 503")
    s.add_argument("--max-request-mb", type=float, default=32.0, help="largest request body accepted (HTTP 413 above)")
    s.add_argument("--no-ui", action="store_true", help="API only: no Gradio UI at /ui (no gradio needed)")
    s.add_argument("--api-key-env", default=None, metavar="VAR",
                   help="require 'Authorization: Bearer <key>' on /v1/ with the key read from this environment "
                        "variable (the UI then asks for user 'thinkgen', password the key)")
    s.set_defaults(func=cmd_serve)

    i = sub.add_parser("info", help="show a checkpoint's components, configs and sizes")
    i.add_argument("--model", default=None, help="checkpoint folder or hub id (default: ThinkGen-Nano)")
    i.set_defaults(func=cmd_info)

    t = sub.add_parser("train", help="train: dit | mllm (supervised), sepgrpo (RL), nano (everything, from scratch)",
                       add_help=False)
    t.add_argument("what", choices=["dit", "mllm", "sepgrpo", "nano"])
    t.set_defaults(func=cmd_train, passthrough=True)

    v = sub.add_parser("eval", help="evaluate: nano (shape world), or a paper benchmark: geneval | dpg | cvtg | wise | "
                                    "imgedit | gedit | risebench (generate, score)", add_help=False)
    v.add_argument("what")
    v.set_defaults(func=cmd_eval, passthrough=True)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    try:
        if getattr(args, "passthrough", False):
            return int(args.func(args, rest) or 0)
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return int(args.func(args) or 0)
    except (InvalidInputError, ConfigError) as e:
        print(f"thinkgen: error: {e}", file=sys.stderr)
        return 2
    except CheckpointError as e:
        print(f"thinkgen: checkpoint error: {e}", file=sys.stderr)
        return 3
    except ThinkgenError as e:
        print(f"thinkgen: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("thinkgen: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
