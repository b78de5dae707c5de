"""Is there a GRPO signal on nano understanding? Greedy vs sampled accuracy and the share of mixed groups.

For held-out understanding questions (the eval's seed and split) it answers each greedily through
``ThinkGenMLLM.think(mode="chat")`` -- the path MLLM-GRPO rollouts take -- and checks that the first 4 of every 16
answers equal ``chat()``'s (the inference path); then samples G answers per question at temperature 1 and reports
the sampled accuracy and the share of questions whose G answers are neither all right nor all wrong (the groups that
carry a GRPO advantage). A benchmark script, not a test.

    python bench/nano_understanding_signal.py --model thinkgen/assets/nano --n 96 --group 6
"""
from __future__ import annotations

import argparse
import json
import sys

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="thinkgen/assets/nano")
    ap.add_argument("--n", type=int, default=96)
    ap.add_argument("--group", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if args.n < 1 or args.group < 2 or args.threads < 1:
        ap.error(f"need --n >= 1, --group >= 2, --threads >= 1 (got {args.n}, {args.group}, {args.threads})")

    from thinkgen.mllm import split_thoughts
    from thinkgen.nano.evaluate import EVAL_SEED
    from thinkgen.nano.prompts import generate
    from thinkgen.nano.scoring import score_answer
    from thinkgen.pipeline import ThinkGenPipeline

    torch.set_num_threads(args.threads)
    pipe = ThinkGenPipeline.from_pretrained(args.model, device="cpu")
    m, G = pipe.mllm, args.group
    qs = generate("understanding", args.n, seed=EVAL_SEED, split="heldout")
    greedy, agree, checked = [], 0, 0
    for i in range(0, len(qs), 16):
        b = qs[i:i + 16]
        out = m.think([s.question for s in b], [[s.input_image()] for s in b], mode="chat", do_sample=False,
                      max_think_tokens=160, max_answer_tokens=16)
        greedy += [score_answer(s, a)["correct"] for s, a in zip(b, out.instructions)]
        for s, a in list(zip(b, out.instructions))[:4]:
            _, chat_answer = split_thoughts(pipe.chat(s.question, images=[s.input_image()], max_new_tokens=128))
            agree += chat_answer.strip() == a.strip()
            checked += 1
    sampled = []
    for i in range(0, len(qs), 8):
        b = qs[i:i + 8]
        out = m.think([s.question for s in b for _ in range(G)], [[s.input_image()] for s in b for _ in range(G)],
                      mode="chat", do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                      seed=list(range(i * G, i * G + len(b) * G)), max_think_tokens=160, max_answer_tokens=16)
        sampled += [score_answer(b[j // G], a)["correct"] for j, a in enumerate(out.instructions)]
    groups = [sampled[q * G:(q + 1) * G] for q in range(len(qs))]
    res = {"model": args.model, "n": len(qs), "group": G, "greedy": sum(greedy) / len(qs),
           "greedy_equals_chat": f"{agree}/{checked}", "sampled": sum(sampled) / len(sampled),
           "mixed_groups": sum(0 < sum(g) < G for g in groups) / len(qs)}
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
