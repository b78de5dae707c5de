"""``thinkgen train dit|mllm --config cfg.yaml [--key=value ...]``.

``main_train(argv)`` parses ``argv`` (without the ``train`` word), builds the config (YAML, then the
overrides, then the dataclass validation) and runs the trainer. ``--print-config`` prints the
resolved config as YAML and exits. Returns the process exit code; errors raise
ConfigError / CheckpointError for the caller (thinkgen.cli maps them to exit codes 2 / 3).
Under ``torchrun`` every process calls this with the same arguments.
"""
from __future__ import annotations

import sys

from ..errors import ConfigError

USAGE = """usage: thinkgen train {dit,mllm} [--config PATH] [--print-config] [--key=value ...]

  dit    flow-matching training of the DiT (stages 1-3; `stage: stage1|stage2|stage3` picks the preset)
  mllm   supervised fine-tuning of the MLLM on think traces / answers

Every config field can be overridden as --field=value (YAML syntax: --lr=1e-4, --data=[a.jsonl,b.jsonl],
--betas=[0.9,0.95], --lora=true). Multi-GPU / multi-process: torchrun --nproc_per_node N -m thinkgen.train.cli dit ...
"""


def parse_config_args(argv: list[str]) -> tuple[str | None, list[str], bool] | None:
    """``[--config PATH] [--print-config] [--key=value ...]`` -> (config path, overrides, print only); None for help.

    Shared by every config-driven command (``train dit|mllm``, ``train sepgrpo``)."""
    config_path, overrides, print_only = None, [], False
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-h", "--help"):
            return None
        if a == "--print-config":
            print_only = True
        elif a == "--config":
            if i + 1 >= len(argv):
                raise ConfigError("--config needs a path")
            config_path = argv[i + 1]
            i += 1
        elif a.startswith("--config="):
            config_path = a.split("=", 1)[1]
        elif a.startswith("--") and "=" in a:
            overrides.append(a)
        else:
            raise ConfigError(f"argument {a!r} is not --config PATH, --print-config or --key=value")
        i += 1
    return config_path, overrides, print_only


def parse_args(argv: list[str]) -> tuple[str, str | None, list[str], bool]:
    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        return "help", None, [], False
    kind = argv.pop(0)
    if kind not in ("dit", "mllm"):
        raise ConfigError(f"unknown trainer {kind!r}; use `thinkgen train dit` or `thinkgen train mllm`")
    parsed = parse_config_args(argv)
    if parsed is None:
        return "help", None, [], False
    return (kind, *parsed)


def main_train(argv: list[str] | None = None) -> int:
    from .config import config_to_yaml, load_config

    kind, path, overrides, print_only = parse_args(sys.argv[1:] if argv is None else argv)
    if kind == "help":
        print(USAGE, end="")
        return 0
    cfg = load_config(kind, path, overrides)
    if print_only:
        print(config_to_yaml(cfg), end="")
        return 0
    if kind == "dit":
        from .dit_trainer import train_dit

        out = train_dit(cfg)
    else:
        from .mllm_sft import train_mllm

        out = train_mllm(cfg)
    from .parallel import cleanup_distributed, print0

    print0(f"done: {out}")
    cleanup_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main_train())
