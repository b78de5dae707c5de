"""Where does nano understanding fail: the look (the thought) or the hop (the answer read from the thought)?

For each held-out understanding question it runs the model as `thinkgen eval nano` does (greedy chat, the answer
after `</think>` scored), then again with the GOLD thought forced after `<think>` (the model only writes the
answer), and checks whether the model's own thought equals the gold one. A benchmark script, not a test.

    python bench/nano_understanding_hop.py --model thinkgen/assets/nano --n 288 [--thought focus] [--out FILE]

``--thought caption`` forces ``scene_caption`` (the phase-1/2 trace), ``focus`` forces ``focus_thought`` (phase 3:
the question's key restated next to what follows it). Prints a table per category and writes JSON (meta + rows).
"""
from __future__ import annotations

import argparse
import collections
import datetime as _dt
import json
import platform
import sys
import time
from pathlib import Path

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="thinkgen/assets/nano")
    ap.add_argument("--n", type=int, default=288, help="held-out questions (the eval's seed and split)")
    ap.add_argument("--thought", choices=["caption", "focus"], default="focus", help="the gold thought to force")
    ap.add_argument("--binding", action="store_true", help="gold thoughts with binding words (a --binding model)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="JSON file (meta, summary, rows)")
    args = ap.parse_args(argv)
    if args.n < 1 or args.threads < 1:
        ap.error(f"--n={args.n} and --threads={args.threads} must be >= 1")

    from transformers import GenerationConfig

    from thinkgen.mllm import split_thoughts
    from thinkgen.nano.evaluate import EVAL_SEED
    from thinkgen.nano.prompts import generate
    from thinkgen.nano.scoring import score_answer
    from thinkgen.nano.vision import focus_thought, scene_caption
    from thinkgen.pipeline import ThinkGenPipeline
    from thinkgen.tokenization import IM_END, PAD_TOKEN

    torch.set_num_threads(args.threads)
    t0 = time.time()
    pipe = ThinkGenPipeline.from_pretrained(args.model, device="cpu")
    m = pipe.mllm
    gen_cfg = GenerationConfig(max_new_tokens=12, do_sample=False, eos_token_id=[m.ids[IM_END], m.ids[PAD_TOKEN]],
                               pad_token_id=m.ids[PAD_TOKEN], bos_token_id=None)
    acc = collections.defaultdict(lambda: [0, 0, 0, 0])      # own answer, gold-thought answer, thought exact, n
    rows = []
    for s in generate("understanding", args.n, seed=EVAL_SEED, split="heldout"):
        img = s.input_image()
        thought, answer = split_thoughts(pipe.chat(s.question, images=[img], max_new_tokens=128))
        gold = (focus_thought(s.input_scene, s.question, args.binding) if args.thought == "focus"
                else scene_caption(s.input_scene, args.binding))
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": s.question}]}]
        # the trained format: the model itself emits the blank line after </think>
        prompt = m.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        batch = m.processor([prompt + f"<think>\n{gold}\n</think>"], [[img]], padding_side="left")
        with torch.no_grad():
            out = m.model.generate(**batch, generation_config=gen_cfg)
        forced = m.tokenizer.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        a = acc[s.category]
        a[0] += bool(score_answer(s, answer)["correct"])
        a[1] += bool(score_answer(s, forced)["correct"])
        a[2] += thought.strip() == gold
        a[3] += 1
        rows.append(dict(category=s.category, question=s.question, answer=s.answer, own_answer=answer,
                         gold_thought_answer=forced, thought=thought, gold_thought=gold))
    summary = {c: dict(own=v[0] / v[3], gold_thought=v[1] / v[3], thought_exact=v[2] / v[3], n=v[3])
               for c, v in sorted(acc.items())}
    tot = [sum(v[i] for v in acc.values()) for i in range(4)]
    summary["overall"] = dict(own=tot[0] / tot[3], gold_thought=tot[1] / tot[3], thought_exact=tot[2] / tot[3],
                              n=tot[3])
    print(f"{'category':<10}{'own answer':>12}{'gold thought':>14}{'thought exact':>15}{'n':>5}")
    for c, v in summary.items():
        print(f"{c:<10}{v['own']:>12.3f}{v['gold_thought']:>14.3f}{v['thought_exact']:>15.3f}{v['n']:>5}")
    if args.out is not None:
        meta = dict(command="python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
                    model=args.model, thought=args.thought, n=args.n,
                    date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    machine=f"{platform.machine()} {torch.get_num_threads()} thread(s), torch {torch.__version__}",
                    seconds=round(time.time() - t0, 1))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(args.out.suffix + ".tmp")
        tmp.write_text(json.dumps(dict(meta=meta, summary=summary, rows=rows), indent=1) + "\n")
        tmp.replace(args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
