"""Census of the nano world's GenEval-style composition categories: how many specs each has, and how many of them the
train/held-out split holds out (``prompts.split_of`` on the canonical spec key). Enumerates the same spec spaces the
``composition`` generator draws from (``prompts._composition``), so it says how many distinct held-out prompts a
held-out accuracy can rest on -- the limit on what ``thinkgen eval nano`` can measure per category.

    python bench/nano_heldout_census.py [--json OUT]
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
from pathlib import Path

from thinkgen.nano.prompts import GENEVAL_CATEGORIES, HELDOUT_FRACTION, _fits, spec_key, split_of
from thinkgen.nano.world import COLOUR_NAMES, KINDS, MAX_COUNT, RELATIONS, GroupSpec, SceneSpec, rendered_caption

SIZES = (None, "small", "large")


def spec_space(category: str):
    """Every spec ``_composition`` can draw for a GenEval category (word orders included)."""
    if category == "single_object":
        return [SceneSpec((GroupSpec(k, 1, None, s),)) for k in KINDS for s in SIZES]
    if category == "two_object":
        return [SceneSpec((GroupSpec(a), GroupSpec(b))) for a, b in itertools.permutations(KINDS, 2)]
    if category == "counting":
        return [SceneSpec((GroupSpec(k, n),)) for k in KINDS for n in range(2, MAX_COUNT + 1)]
    if category == "colors":
        return [SceneSpec((GroupSpec(k, 1, c, s),)) for k in KINDS for c in COLOUR_NAMES for s in SIZES]
    if category == "position":
        return [SceneSpec((GroupSpec(a), GroupSpec(b)), r) for a, b in itertools.permutations(KINDS, 2)
                for r in RELATIONS]
    if category == "color_attr":
        return [SceneSpec((GroupSpec(a, 1, c), GroupSpec(b, 1, d))) for a, b in itertools.permutations(KINDS, 2)
                for c, d in itertools.permutations(COLOUR_NAMES, 2)]
    raise ValueError(f"unknown category {category!r}; expected one of {GENEVAL_CATEGORIES}")


def census() -> dict:
    out = {}
    for cat in GENEVAL_CATEGORIES:
        caption_key = {rendered_caption(s): spec_key(s) for s in spec_space(cat) if _fits(s)}   # word order -> spec
        held = sorted(c for c, k in caption_key.items() if split_of(k) == "heldout")
        out[cat] = {"prompts": len(caption_key), "specs": len(set(caption_key.values())),
                    "heldout_specs": len({caption_key[c] for c in held}), "heldout_prompts": len(held),
                    "heldout_examples": held[:6]}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, default=None, help="also write the census as JSON here (atomically)")
    args = ap.parse_args(argv)
    if args.json is not None and not args.json.parent.is_dir():
        ap.error(f"--json {args.json}: folder {args.json.parent} does not exist (create it or give another path)")
    rows = census()
    print(f"held-out fraction {HELDOUT_FRACTION}; {len(KINDS)} kinds, {len(COLOUR_NAMES)} colours, counts 2-{MAX_COUNT}, "
          f"{len(RELATIONS)} relations\n")
    print("| category | prompts | specs | held-out specs | held-out prompts | examples |")
    print("| --- | --- | --- | --- | --- | --- |")
    for cat, r in rows.items():
        print(f"| {cat} | {r['prompts']} | {r['specs']} | {r['heldout_specs']} | {r['heldout_prompts']} | "
              f"{'; '.join(r['heldout_examples'])} |")
    if args.json is not None:
        tmp = args.json.with_name(args.json.name + ".tmp")
        tmp.write_text(json.dumps(rows, indent=1))
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
