"""Plot scalar curves from a run's logs/metrics.jsonl to a PNG (Pillow only; no matplotlib needed).

    python bench/plot_metrics.py runs/nano_dit_proof/logs/metrics.jsonl bench/results/sepgrpo_dit_proof.png \
        --keys dit/reward_mean dit/kl
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image, ImageDraw


def plot(series: dict[str, list[tuple[float, float]]], out: Path, width: int = 640, height: int = 240) -> None:
    panels = [k for k, v in series.items() if v]
    img = Image.new("RGB", (width, height * max(1, len(panels))), "white")
    d = ImageDraw.Draw(img)
    for p, key in enumerate(panels):
        pts = series[key]
        x0, y0, x1, y1 = 60, p * height + 25, width - 20, (p + 1) * height - 30
        xs, ys = [a for a, _ in pts], [b for _, b in pts]
        lo, hi = min(ys), max(ys)
        if hi - lo < 1e-12:
            lo, hi = lo - 0.5, hi + 0.5
        sx = lambda x: x0 + (x - xs[0]) / max(xs[-1] - xs[0], 1e-9) * (x1 - x0)  # noqa: E731
        sy = lambda y: y1 - (y - lo) / (hi - lo) * (y1 - y0)  # noqa: E731
        d.rectangle([x0, y0, x1, y1], outline="black")
        d.text((x0, y0 - 18), key, fill="black")
        d.text((4, y0), f"{hi:.3g}", fill="black")
        d.text((4, y1 - 10), f"{lo:.3g}", fill="black")
        d.text((x0, y1 + 4), f"step {xs[0]:g}", fill="black")
        d.text((x1 - 70, y1 + 4), f"step {xs[-1]:g}", fill="black")
        d.line([(sx(x), sy(y)) for x, y in pts], fill=(30, 90, 200), width=2)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("metrics", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--keys", nargs="+", default=None, help="scalar names (default: every key with 'reward')")
    args = ap.parse_args(argv)
    rows = [json.loads(line) for line in args.metrics.read_text().splitlines() if line.strip()]
    keys = args.keys or sorted({k for r in rows for k in r if "reward" in k})
    series = {k: [(r.get("step", i), r[k]) for i, r in enumerate(rows) if isinstance(r.get(k), (int, float))]
              for k in keys}
    plot(series, args.out)
    print(f"wrote {args.out} ({', '.join(k for k in keys if series[k])})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
