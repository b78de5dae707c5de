"""What a benchmark result file records about how it was made: the command, the date and the machine."""
from __future__ import annotations

import datetime as _dt
import platform
import sys


def provenance(argv: list[str] | None) -> dict[str, str]:
    """``argv``: the arguments ``main`` was given (None = this process's command line)."""
    import torch

    return {"command": "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
            "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.machine()}, {platform.system()}, torch {torch.__version__}"}


def write_result(path, result: dict) -> None:
    """Write a benchmark's result JSON atomically (thinkgen.checkpoint.atomic_write_json) and say where."""
    from pathlib import Path

    from thinkgen.checkpoint import atomic_write_json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, result)
    print(f"wrote {path}")
