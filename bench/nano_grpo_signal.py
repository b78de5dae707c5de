"""Is there an MLLM-GRPO signal? Greedy vs sampled answer accuracy and the share of mixed groups, on nano.

For held-out prompts of a family it answers each greedily the way MLLM-GRPO rollouts do -- understanding through
``ThinkGenMLLM.think(mode="chat")`` (and checks that the first 4 of every 16 answers equal ``chat()``'s, the
inference path), reasoning through ``think(mode="think")`` with the answer after ``</think>`` scored as the painter's
instruction (``score_answer``) -- then samples G answers per prompt (``--temperature``, default 1; sample j of the
whole run seeded with j) and reports the sampled accuracy, the share of prompts whose G answers are neither all right
nor all wrong (the groups that carry a GRPO advantage) and the accuracy of the G samples' majority answer
(self-consistency; ``vote_with_greedy`` adds the greedy answer as one more vote; a tie goes to the greedy answer when
it is among the tied, else to the earliest sample). A benchmark script, not a test.

    python bench/nano_grpo_signal.py --model thinkgen/assets/nano --family understanding --n 96 --group 6
    python bench/nano_grpo_signal.py --model runs/lazy/model --family reasoning --n 48 --prompt-seed 7
    python bench/nano_grpo_signal.py --family text --category reasoned --split train --n 40   # any image family

Image families other than reasoning (composition, text, editing, reflection) are answered the same way, editing and
reflection with their input image; ``--category`` narrows the draw, ``--split train`` asks training prompts (is a
held-out miss a skill GRPO could sharpen, or an answer the model never samples?), and ``any_right`` is the share of
prompts with at least one right sample among the G.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="thinkgen/assets/nano")
    ap.add_argument("--family", choices=["understanding", "reasoning", "composition", "text", "editing", "reflection"],
                    default="understanding")
    ap.add_argument("--category", default=None, help="one category of the family (default: all)")
    ap.add_argument("--split", choices=["heldout", "train"], default="heldout")
    ap.add_argument("--prompt-seed", type=int, default=None, help="held-out draw seed (default: the eval's)")
    ap.add_argument("--n", type=int, default=96)
    ap.add_argument("--group", type=int, default=6)
    ap.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of the G answers")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if args.n < 1 or args.group < 2 or args.threads < 1 or not args.temperature > 0:
        ap.error(f"need --n >= 1, --group >= 2, --threads >= 1, --temperature > 0 (got {args.n}, {args.group}, "
                 f"{args.threads}, {args.temperature})")

    from thinkgen.mllm import split_thoughts
    from thinkgen.nano.evaluate import EVAL_SEED
    from thinkgen.nano.prompts import CATEGORIES, generate
    from thinkgen.nano.scoring import score_answer
    from thinkgen.pipeline import ThinkGenPipeline

    torch.set_num_threads(args.threads)
    pipe = ThinkGenPipeline.from_pretrained(args.model, device="cpu")
    m, G = pipe.mllm, args.group
    und = args.family == "understanding"
    seed = EVAL_SEED if args.prompt_seed is None else args.prompt_seed
    if args.category is not None and args.category not in CATEGORIES[args.family]:
        ap.error(f"--category {args.category!r} is not a {args.family} category; use one of {CATEGORIES[args.family]}")
    qs = generate(args.family, args.n, seed=seed, split=args.split,
                  categories=None if args.category is None else (args.category,))
    mode, answer_tokens = ("chat", 16) if und else ("think", 48)

    def ask(s):
        return s.question if und else s.prompt

    def images(s):
        return [s.input_image()] if und or s.input_scene is not None else []

    greedy, greedy_text, agree, checked = [], [], 0, 0
    for i in range(0, len(qs), 16):
        b = qs[i:i + 16]
        out = m.think([ask(s) for s in b], [images(s) for s in b], mode=mode, do_sample=False,
                      max_think_tokens=160, max_answer_tokens=answer_tokens)
        greedy += [score_answer(s, a)["correct"] for s, a in zip(b, out.instructions)]
        greedy_text += [a.strip() for a in out.instructions]
        for s, a in list(zip(b, out.instructions))[:4] if und else []:
            _, chat_answer = split_thoughts(pipe.chat(s.question, images=[s.input_image()], max_new_tokens=128))
            agree += chat_answer.strip() == a.strip()
            checked += 1
    sampled, sampled_text = [], []
    for i in range(0, len(qs), 8):
        b = qs[i:i + 8]
        out = m.think([ask(s) for s in b for _ in range(G)], [images(s) for s in b for _ in range(G)],
                      mode=mode, do_sample=True, temperature=args.temperature, top_p=1.0, top_k=0,
                      seed=list(range(i * G, i * G + len(b) * G)), max_think_tokens=160,
                      max_answer_tokens=answer_tokens)
        sampled += [score_answer(b[j // G], a)["correct"] for j, a in enumerate(out.instructions)]
        sampled_text += [a.strip() for a in out.instructions]
    groups = [sampled[q * G:(q + 1) * G] for q in range(len(qs))]

    def vote(q: int, with_greedy: bool) -> bool:
        answers = sampled_text[q * G:(q + 1) * G] + ([greedy_text[q]] if with_greedy else [])
        counts = collections.Counter(answers)
        top = [a for a in counts if counts[a] == max(counts.values())]
        pick = greedy_text[q] if greedy_text[q] in top else top[0]
        return bool(score_answer(qs[q], pick)["correct"])
    res = {"model": args.model, "family": args.family, "category": args.category, "split": args.split,
           "prompt_seed": seed, "n": len(qs), "group": G,
           "temperature": args.temperature, "greedy": sum(greedy) / len(qs),
           "greedy_equals_chat": f"{agree}/{checked}" if und else "n/a",
           "sampled": sum(sampled) / len(sampled),
           "mixed_groups": sum(0 < sum(g) < G for g in groups) / len(qs),
           "any_right": sum(any(g) for g in groups) / len(qs),
           "vote": sum(vote(q, False) for q in range(len(qs))) / len(qs),
           "vote_with_greedy": sum(vote(q, True) for q in range(len(qs))) / len(qs)}
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
