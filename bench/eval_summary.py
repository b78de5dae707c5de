"""One flat row of a `thinkgen eval nano` results.json summary (a benchmark helper, not part of the library).

    from bench.eval_summary import flat_summary
    flat_summary(Path("ev/results.json"), digits=3)
    # {"composition_off": 0.421, "composition/two_object_off": 0.0, ..., "text_on": 0.328, ...}

Keys: ``<family>_<think mode>`` for a family's overall accuracy and ``<family>/<category>_<think mode>`` for each
category. A missing file gives ``{}``.
"""
from __future__ import annotations

import json
from pathlib import Path


def flat_summary(path: Path, digits: int = 4) -> dict[str, float]:
    path = Path(path)
    if not path.is_file():
        return {}
    summary, row = json.loads(path.read_text())["summary"], {}
    for mode in ("off", "on"):
        for fam, v in summary.get(f"think_{mode}", {}).items():
            if isinstance(v, dict) and "overall" in v:
                row[f"{fam}_{mode}"] = round(v["overall"], digits)
                for cat, x in v.get("categories", {}).items():
                    row[f"{fam}/{cat}_{mode}"] = round(x, digits)
    return row
