"""Eyes for the nano MLLM: dense pretraining of the vision tower on the world's exact ground truth, and the data of
the understanding stage (scene captions + VQA).

Why: with the language-model loss alone a randomly initialised tower learns almost nothing about *where* things are
(held-out VQA stayed at 0.3-0.4 whatever the resolution, depth or number of steps we tried); the released Qwen3-VL
tower arrives pretrained. Here the world gives every visual token an exact label, so the tower is pretrained the way
a detector backbone would be:

* every merged visual token (a cell of the canvas) predicts the kind, colour and size of the object covering most of
  its cell and the sign letter covering most of it (linear probe shared by all tokens);
* the concatenated tokens predict the whole 3x3 slot grid and the sign text (global linear probe).

The understanding stage then teaches the language model to read those tokens: scene captions ("small red square
top left , large blue circle centre , sign AB": every object of the image, in words) next to the VQA records, with
the DiT-conditioning features of text-only prompts anchored to the SFT model (``MLLMSFTConfig.anchor_weight``).

    pretrain_vision(mllm, steps=3000)         # in place; returns held-out probe accuracies
    write_understanding_data(folder, 12000, 12000, seed=0)
"""
from __future__ import annotations

import math
import random
import re
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from thinkgen.nano import world as W

N_KIND, N_COLOUR = len(W.KINDS) + 1, len(W.COLOUR_NAMES) + 1
N_SIZE, N_LETTER = len(W.SIZE_NAMES) + 1, len(W.LETTERS) + 1
HEADS = (N_KIND, N_COLOUR, N_SIZE, N_LETTER)          # class 0 = nothing there
MIN_COVER = 6                                         # pixels of a cell an object / letter must cover to count
CAPTION_QUESTION = "what shapes are there ?"


# ------------------------------------------------------------------------------------------------ exact targets
def cell_targets(scene: W.Scene, grid: int) -> torch.Tensor:
    """(grid*grid, 4) long: for each cell of a grid x grid split of the canvas (row-major, as the merged visual
    tokens), 1 + index of the kind, colour, size of the object covering most of the cell and of the sign letter
    covering most of it; 0 = none covers MIN_COVER pixels."""
    if W.CANVAS % grid:
        raise ValueError(f"grid {grid} does not divide the {W.CANVAS} px canvas")
    c = W.CANVAS // grid
    t = torch.zeros(grid * grid, 4, dtype=torch.long)
    best = np.zeros((grid, grid))
    for o in scene.objects:
        cover = W.object_mask(o).reshape(grid, c, grid, c).sum((1, 3))
        for r, q in zip(*np.nonzero((cover > best) & (cover >= MIN_COVER))):
            best[r, q] = cover[r, q]
            t[r * grid + q, :3] = torch.tensor([1 + W.KINDS.index(o.kind), 1 + W.COLOUR_NAMES.index(o.colour),
                                                1 + W.SIZE_NAMES.index(o.size)])
    if scene.text:
        x0, y0 = W.text_origin(len(scene.text))
        best = np.zeros((grid, grid))
        for j, ch in enumerate(scene.text):
            box = np.zeros((W.CANVAS, W.CANVAS))
            xa = x0 + j * W.GLYPH_ADVANCE
            box[y0:y0 + W.GLYPH_H * W.GLYPH_SCALE, xa:xa + W.GLYPH_W * W.GLYPH_SCALE] = 1
            cover = box.reshape(grid, c, grid, c).sum((1, 3))
            for r, q in zip(*np.nonzero((cover > best) & (cover >= MIN_COVER))):
                best[r, q] = cover[r, q]
                t[r * grid + q, 3] = 1 + W.LETTERS.index(ch)
    return t


def slot_targets(scene: W.Scene) -> torch.Tensor:
    """(9 + MAX_TEXT, 4) long: per slot of the 3x3 grid (row-major) kind / colour / size (letter column 0), then
    per sign position the letter (other columns 0). 0 = empty."""
    t = torch.zeros(9 + W.MAX_TEXT, 4, dtype=torch.long)
    for o in scene.objects:
        r, q = o.slot
        t[r * 3 + q, :3] = torch.tensor([1 + W.KINDS.index(o.kind), 1 + W.COLOUR_NAMES.index(o.colour),
                                         1 + W.SIZE_NAMES.index(o.size)])
    for j, ch in enumerate(scene.text or ""):
        t[9 + j, 3] = 1 + W.LETTERS.index(ch)
    return t


def binding_word(colour: str, kind: str) -> str:
    """One word naming a colour-kind pair ("cyan", "star" -> "cyanstar"): a binding token, so that finding "the cyan
    star" in a caption is a one-token match instead of a match on two adjacent words."""
    return f"{colour}{kind}"


# binding word -> the words it binds (the new token's embedding starts as their mean; add_word_tokens)
BINDING_WORDS: dict[str, str] = {binding_word(c, k): f"{c} {k}" for c in W.COLOUR_NAMES for k in W.KINDS}


def scene_caption(scene: W.Scene, binding: bool = False) -> str:
    """Every object in slot order as "size colour kind slot", then "sign TEXT"; joined by " , ". With ``binding``
    each object's binding word follows its kind ("small cyan star cyanstar top left")."""
    def bound(o: W.Obj) -> str:
        return f" {binding_word(o.colour, o.kind)}" if binding else ""

    parts = [f"{o.size} {o.colour} {o.kind}{bound(o)} {W.slot_name(o.slot)}"
             for o in sorted(scene.objects, key=lambda o: o.slot)]
    if scene.text:
        parts.append(f"sign {scene.text}")
    return " , ".join(parts)


_WHERE = re.compile(r"^where is the (\w+) (\w+) ?\?$")
_EXISTS = re.compile(r"^is there a (\w+) (\w+) ?\?$")
_SHAPE = re.compile(r"^what shape is the (\w+) object ?\?$")
_COLOUR = re.compile(r"^what colour is the (\w+) ?\?$")
_SIZE = re.compile(r"^is the (\w+) (\w+) small or large ?\?$")
_COUNT_COLOUR = re.compile(r"^how many (\w+) shapes are there ?\?$")
_COUNT_KIND = re.compile(r"^how many (\w+) are there ?\?$")
_POSITION = re.compile(r"^is the (\w+) (\w+) (left of|right of|above|below) the (\w+) (\w+) ?\?$")


def focus_thought(scene: W.Scene, question: str, binding: bool = False) -> str:
    """``scene_caption`` followed by the question's key restated with the attribute it asks for, so that the answer
    is read next to the question's key (an induction-style copy) instead of by a two-hop lookup in the caption:

    * "where is the blue circle?" / "is there a blue circle?" -> caption + " ; blue circle top middle" (or "none")
    * "what shape is the blue object?" -> caption + " ; blue circle"
    * "what colour is the circle?" -> caption + " ; circle blue"
    * "is the blue circle small or large?" -> caption + " ; blue circle small"
    * "how many circles are there?" / "how many blue shapes are there?" -> caption + " ; blue circle , red circle"
      (the matching objects in slot order, or "none"); "how many shapes are there?" keeps the caption alone
    * "is the A B left of the C D?" -> caption + " ; A B slot ; C D slot ; " + every relation of A to C in the fixed
      order of ``RELATIONS`` with its verdict ("left of yes , right of no , above no , below yes"), then the asked
      relation once more with its verdict (" ; left of yes"), so that, as in every other category, the answer is
      the thought's last word
    Sign questions keep the caption alone. With ``binding`` the caption carries binding words (``scene_caption``), so
    does every restated "colour kind" key (where / exists / size / position: "where is the blue circle?" -> caption +
    " ; blue circle bluecircle top middle", "is the blue circle small or large?" -> " ; blue circle bluecircle small"),
    and a count lists the matching objects by their binding words (" ; bluecircle , redcircle"): what follows the
    key is read at the one caption token that matches it."""
    cap = scene_caption(scene, binding)
    objs = sorted(scene.objects, key=lambda o: o.slot)

    def find(colour: str | None = None, kind: str | None = None) -> list[W.Obj]:
        return [o for o in objs if colour in (None, o.colour) and kind in (None, o.kind)]

    def key(colour: str, kind: str) -> str:
        return f"{colour} {kind} {binding_word(colour, kind)}" if binding else f"{colour} {kind}"

    def entry(colour: str, kind: str) -> str:
        hit = find(colour, kind)
        return f"{key(colour, kind)} " + (W.slot_name(hit[0].slot) if hit else "none")

    q = " ".join(question.split())
    if (m := _WHERE.match(q)) or (m := _EXISTS.match(q)):
        return f"{cap} ; {entry(m.group(1), m.group(2))}"
    if m := _SHAPE.match(q):
        hit = find(colour=m.group(1))
        return f"{cap} ; {m.group(1)} {hit[0].kind if hit else 'none'}"
    if (m := _COLOUR.match(q)) and m.group(1) in W.KINDS:
        hit = find(kind=m.group(1))
        return f"{cap} ; {m.group(1)} {hit[0].colour if hit else 'none'}"
    if m := _SIZE.match(q):
        hit = find(m.group(1), m.group(2))
        return f"{cap} ; {key(m.group(1), m.group(2))} {hit[0].size if hit else 'none'}"
    if (m := _COUNT_COLOUR.match(q)) and m.group(1) in W.COLOUR_NAMES:
        hit = find(colour=m.group(1))
    elif (m := _COUNT_KIND.match(q)) and m.group(1) != "shapes":
        hit = [o for o in objs if W.plural(o.kind, 2) == m.group(1)]
    else:
        hit = None
    if hit is not None:
        named = [binding_word(o.colour, o.kind) if binding else f"{o.colour} {o.kind}" for o in hit]
        return f"{cap} ; " + (" , ".join(named) or "none")
    if m := _POSITION.match(q):
        a, b = find(m.group(1), m.group(2)), find(m.group(4), m.group(5))
        if a and b:
            held = W.relative_position(a[0], b[0])
            rels = " , ".join(f"{r} {'yes' if r in held else 'no'}" for r in W.RELATIONS)
            rels += f" ; {m.group(3)} {'yes' if m.group(3) in held else 'no'}"
        else:
            rels = "none"
        return f"{cap} ; {entry(m.group(1), m.group(2))} ; {entry(m.group(4), m.group(5))} ; {rels}"
    return cap


def random_training_scene(rng: random.Random) -> W.Scene:
    return W.random_scene(rng, rng.randint(1, W.MAX_COUNT), text_prob=0.5, jitter=rng.choice((0, 0, 1, 2)))


# ------------------------------------------------------------------------------------------------ probes + loop
class VisionProbe(nn.Module):
    """Linear heads on the merged visual tokens: per token (shared) and over all tokens concatenated (slots)."""

    def __init__(self, dim: int, n_tokens: int):
        super().__init__()
        self.n_tokens = n_tokens
        self.token = nn.Linear(dim, sum(HEADS))
        self.slots = nn.Linear(dim * n_tokens, (9 + W.MAX_TEXT) * sum(HEADS))

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # tokens (B, N, D) -> logits (B, N, sum(HEADS)) and (B, 9 + MAX_TEXT, sum(HEADS))
        return self.token(tokens), self.slots(tokens.flatten(1)).view(tokens.shape[0], 9 + W.MAX_TEXT, sum(HEADS))


def _head_losses(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    loss, acc, k = logits.new_zeros(()), [], 0
    for j, n in enumerate(HEADS):
        lg = logits[..., k:k + n].reshape(-1, n)
        tg = target[..., j].reshape(-1)
        loss = loss + F.cross_entropy(lg.float(), tg)
        acc.append(float((lg.argmax(-1) == tg).float().mean()))
        k += n
    return loss, acc


def visual_tokens(mllm, images) -> torch.Tensor:
    """(B, N, D) merged visual tokens of same-size images (what the language model receives)."""
    pv = mllm.processor.preprocess_images(images)
    visual = mllm.model.model.visual
    out = visual(pv["pixel_values"].to(mllm.device, mllm.dtype), grid_thw=pv["image_grid_thw"].to(mllm.device),
                 return_dict=True)
    return out.pooler_output.view(len(images), -1, out.pooler_output.shape[-1])


def pretrain_vision(mllm, steps: int, lr: float = 2e-3, batch_size: int = 32, seed: int = 0, log_every: int = 250,
                    n_heldout: int = 256, log=print) -> dict[str, float]:
    """Train ``mllm.model.model.visual`` (in place; the language model is untouched) with the probes on fresh random
    scenes; return the held-out accuracies (token_kind ... slot_letter)."""
    visual = mllm.model.model.visual
    grid_thw = mllm.processor.preprocess_images([W.render(W.Scene())])["image_grid_thw"][0]
    n_tok = mllm.processor.num_image_tokens(grid_thw)
    grid = math.isqrt(n_tok)
    if grid * grid != n_tok:
        raise ValueError(f"the processor gives {n_tok} visual tokens per {W.CANVAS} px scene, not a square grid")
    dim = visual.merger.linear_fc2.out_features
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = VisionProbe(dim, n_tok).to(mllm.device)
    params = list(visual.parameters()) + list(probe.parameters())
    was = [p.requires_grad for p in visual.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50) * max(
        0.05, 0.5 * (1 + math.cos(math.pi * min(s, steps) / max(1, steps)))))
    rng, held_rng = random.Random(seed), random.Random(seed + 10_007)
    held = [random_training_scene(held_rng) for _ in range(n_heldout)]

    def losses(scenes):
        tok = visual_tokens(mllm, [W.render(s) for s in scenes])
        lt, ls = probe(tok)
        a, acc_t = _head_losses(lt, torch.stack([cell_targets(s, grid) for s in scenes]).to(tok.device))
        b, acc_s = _head_losses(ls, torch.stack([slot_targets(s) for s in scenes]).to(tok.device))
        return a + b, acc_t + acc_s

    def heldout() -> dict[str, float]:
        visual.eval()
        with torch.no_grad():
            _, acc = losses(held)
        visual.train()
        names = [f"{w}_{h}" for w in ("token", "slot") for h in ("kind", "colour", "size", "letter")]
        return {n: round(a, 4) for n, a in zip(names, acc)}

    visual.train()
    t0 = time.time()
    for step in range(1, steps + 1):
        loss, _ = losses([random_training_scene(rng) for _ in range(batch_size)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if log_every and (step % log_every == 0 or step == steps):
            log(f"vision pretraining step {step}/{steps} loss {float(loss.detach()):.4f} held-out {heldout()} "
                f"({time.time() - t0:.0f} s)")
    visual.eval()
    for p, w in zip(visual.parameters(), was):
        p.requires_grad_(w)
    return heldout()


# ------------------------------------------------------------------------------------------------ data
def write_understanding_data(folder: str | Path, n_qa: int, n_captions: int, seed: int = 0,
                             sft_jsonl: str | Path | None = None, focus: bool = False,
                             categories: tuple[str, ...] | None = None, binding: bool = False) -> dict[str, Path]:
    """Data of the understanding SFT stage, with images, in ``folder``:

    * ``vqa.jsonl``: train-split understanding questions; each answer follows a think trace that describes the
      scene (``<think> small red square top left , ... </think> red``): the model looks first, in words, then
      answers from its own description (ThinkGen's think-then-answer, applied to understanding); with ``focus``
      the trace ends with the question's key restated (``focus_thought``);
    * ``captions.jsonl``: random scenes with the question ``CAPTION_QUESTION`` answered by ``scene_caption``;
    * ``sft_gen.jsonl`` (when ``sft_jsonl`` is given): its generation records only (absolute image paths), so the
      old answer-only understanding records do not teach the model to skip the look.

    ``categories`` (default: every understanding category once) is the round-robin order of the questions: a category
    named twice gets twice the share (``("count", "count", "exists", ...)``). ``binding``: focus thoughts with binding
    words (``focus_thought``); the model's tokenizer should hold ``BINDING_WORDS`` as tokens
    (``thinkgen.train.models.add_word_tokens``)."""
    from thinkgen.nano.data import _ImageStore, _write_jsonl, sft_record
    from thinkgen.nano.prompts import generate

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    store = _ImageStore(folder)
    vqa = []
    for s in generate("understanding", n_qa, seed=seed, split="train", categories=categories):
        rec = sft_record(s, store)
        rec["think"] = (focus_thought(s.input_scene, s.question, binding) if focus
                        else scene_caption(s.input_scene, binding))
        vqa.append(rec)
    rng = random.Random(seed + 1)
    caps = []
    for _ in range(n_captions):
        sc = random_training_scene(rng)
        caps.append({"task_type": "understanding", "instruction": CAPTION_QUESTION, "family": "understanding",
                     "category": "caption", "answer": scene_caption(sc),
                     "input_images": [store.put("scene:" + sc.signature(), W.render(sc))]})
    paths = {"vqa": folder / "vqa.jsonl", "captions": folder / "captions.jsonl"}
    _write_jsonl(paths["vqa"], vqa)
    _write_jsonl(paths["captions"], caps)
    if sft_jsonl is not None:
        import json

        src = Path(sft_jsonl)
        gen = []
        for line in src.read_text().splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            if rec["task_type"] == "understanding":
                continue
            if rec.get("input_images"):
                rec["input_images"] = [str((src.parent / p).resolve()) for p in rec["input_images"]]
            if rec.get("output_image"):
                rec["output_image"] = str((src.parent / rec["output_image"]).resolve())
            gen.append(rec)
        paths["sft_gen"] = folder / "sft_gen.jsonl"
        _write_jsonl(paths["sft_gen"], gen)
    return paths


__all__ = ["cell_targets", "slot_targets", "scene_caption", "binding_word", "BINDING_WORDS", "focus_thought",
           "VisionProbe", "pretrain_vision", "visual_tokens",
           "write_understanding_data", "CAPTION_QUESTION"]
