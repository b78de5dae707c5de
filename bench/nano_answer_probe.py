"""Can MLLM-GRPO reach these prompts? Answer accuracy of a nano model's MLLM, greedy and sampled, held-out vs train.

    python bench/nano_answer_probe.py --model thinkgen/assets/nano --family text --category reasoned --n 40 --group 6

For ``n`` prompts of one family/category from each split: the greedy think-on answer's accuracy, the share of prompts
where at least one of ``group`` sampled answers (the model's think sampling, temperature 1) is right, the mean
sampled accuracy, and the share of groups with mixed rewards (the only groups GRPO learns from). A held-out split
with no right samples is out of GRPO's reach: it can only sharpen what the policy already samples. No image is
judged (one denoising step per call); a benchmark helper, not a test.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def probe(pipe, family: str, category: str, n: int, group: int, split: str) -> dict:
    from thinkgen.nano import prompts as P
    from thinkgen.nano.scoring import score_answer

    samples = P.generate(family, n, seed=1234, split=split, categories=(category,))
    greedy = any_right = mixed = 0
    sampled = 0.0
    for s in samples:
        images = [[s.input_image()]] if s.input_scene is not None else None
        out = pipe([s.prompt], images=images, think="on", height=64, width=64, num_inference_steps=1, seed=0)
        greedy += bool(score_answer(s, out.instructions[0])["correct"])
        outs = pipe([s.prompt] * group, images=images * group if images else None, think="on", height=64, width=64,
                    num_inference_steps=1, seed=list(range(group)), think_do_sample=True)
        right = [bool(score_answer(s, a)["correct"]) for a in outs.instructions]
        any_right += any(right)
        mixed += 0 < sum(right) < group
        sampled += sum(right) / group
    k = len(samples)
    return {"split": split, "prompts": k, "greedy": greedy / k, "any_of_group": any_right / k,
            "sampled_mean": sampled / k, "mixed_groups": mixed / k}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="thinkgen/assets/nano")
    ap.add_argument("--family", default="text")
    ap.add_argument("--category", default="reasoned")
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--group", type=int, default=6)
    ap.add_argument("--json", default=None, help="write the results here as well")
    args = ap.parse_args()
    import torch

    from thinkgen.pipeline import ThinkGenPipeline

    torch.manual_seed(0)
    pipe = ThinkGenPipeline.from_pretrained(args.model)
    res = {"model": args.model, "family": args.family, "category": args.category, "group": args.group,
           "splits": [probe(pipe, args.family, args.category, args.n, args.group, sp) for sp in ("heldout", "train")]}
    for r in res["splits"]:
        print(f"{r['split']:8s} greedy {r['greedy']:.3f}  any-of-{args.group} {r['any_of_group']:.3f}  "
              f"sampled {r['sampled_mean']:.3f}  mixed groups {r['mixed_groups']:.3f}  ({r['prompts']} prompts)")
    if args.json:
        out = Path(args.json)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(json.dumps(res, indent=1) + "\n")
        tmp.replace(out)                                         # atomic: no half-written result file


if __name__ == "__main__":
    main()
