"""DiT flow-matching trainer on a tiny released-layout model (CPU): learning, stage-1 freezing, exact resume,
LoRA export, feature cache, config checks on resume, CLI, and a 2-process torchrun run (gloo)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from thinkgen.checkpoint import FaultInjected, verify_manifest
from thinkgen.errors import ConfigError
from thinkgen.models.dit import ThinkGenTransformer2DModel
from thinkgen.train.config import stage1, stage2
from thinkgen.train.dit_trainer import train_dit
from thinkgen.train.tiny import write_tiny_dataset

REPO = Path(__file__).resolve().parents[1]
W = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def assets(tiny_ckpt, tmp_path_factory):
    """The shared tiny released-layout checkpoint (conftest) + 32x32 shape images (8 t2i, 4 edits)."""
    data = write_tiny_dataset(tmp_path_factory.mktemp("dit") / "data", n_t2i=8, n_edit=4)
    return Path(tiny_ckpt), data


def cfg_for(assets, out, **kw):
    model, data = assets
    base = dict(model_dir=str(model), data=[str(data)], output_dir=str(out), batch_size=2, warmup_steps=0,
                lr=1e-3, max_steps=6, save_every=3, log_every=1, shuffle_buffer=4, seed=0)
    return stage2(**{**base, **kw})


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / W))


def metrics(out) -> list[dict]:
    return [json.loads(l) for l in (Path(out) / "logs" / "metrics.jsonl").read_text().splitlines()]


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_loss_decreases_on_tiny_overfit_set(assets, tmp_path):
    model, _ = assets
    data = write_tiny_dataset(tmp_path / "data", n_t2i=2, n_edit=0)
    cfg = cfg_for(assets, tmp_path / "run", data=[str(data)], max_steps=30, save_every=0, lr=3e-3,
                  prompt_dropout_prob=0.0, feature_cache_dir=str(tmp_path / "fcache"),
                  latent_cache_dir=str(tmp_path / "lcache"))
    final = train_dit(cfg)
    losses = [m["train/loss"] for m in metrics(cfg.output_dir)]
    assert len(losses) == 30
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.5 * first, (first, last)
    verify_manifest(final)
    loaded = ThinkGenTransformer2DModel.from_pretrained(final / "transformer")      # strict load of the export
    assert loaded.config.text_feat_dim == 32
    for comp in ("mllm", "processor", "vae", "scheduler", "model_index.json"):
        assert (final / comp).exists()


def test_stage1_trains_only_connector_and_prepad(assets, tmp_path):
    model, _ = assets
    cfg = stage1(model_dir=str(model), data=[str(assets[1])], output_dir=str(tmp_path / "run"), batch_size=2,
                 max_steps=3, warmup_steps=0, lr=1e-2, save_every=0, shuffle_buffer=2)
    final = train_dit(cfg)
    before, after = weights(model / "transformer"), weights(final / "transformer")
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    connector = {k for k in before if k.startswith("time_caption_embed.caption_embedder.") or k == "prepad_embed"}
    assert changed == connector and len(connector) >= 3


def run_with_fault(cfg, fault: str):
    os.environ["THINKGEN_FAULT"] = fault
    try:
        with pytest.raises(FaultInjected):
            train_dit(cfg)
    finally:
        del os.environ["THINKGEN_FAULT"]


def test_resume_is_bit_identical(assets, tmp_path):
    straight = train_dit(cfg_for(assets, tmp_path / "a"))
    cfg = cfg_for(assets, tmp_path / "b")
    run_with_fault(cfg, "step:5")                      # killed after step 5; step-3 is the newest checkpoint
    assert (tmp_path / "b" / "checkpoints" / "step-00000003").is_dir()
    resumed = train_dit(cfg)
    assert sha(straight / "transformer" / W) == sha(resumed / "transformer" / W)
    a, b = (torch.load(p / "checkpoints" / "step-00000006" / "trainer_state" / "optimizer.pt", weights_only=True)
            for p in (tmp_path / "a", tmp_path / "b"))
    for k in a["state"]:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(a["state"][k][name], b["state"][k][name])
    ma, mb = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    assert [m["step"] for m in mb] == list(range(1, 7))          # no duplicated step lines after resume
    assert [m["train/loss"] for m in ma] == [m["train/loss"] for m in mb]


def test_resume_after_kill_inside_checkpoint_write_lora_ema_cache(assets, tmp_path):
    kw = dict(lora=True, lora_rank=4, lora_alpha=8.0, ema_decay=0.9, save_every=2, max_steps=6,
              feature_cache_dir=str(tmp_path / "fc"))
    straight = train_dit(cfg_for(assets, tmp_path / "a", **kw))
    cfg = cfg_for(assets, tmp_path / "b", **kw)
    run_with_fault(cfg, "ckpt_write:4:2")               # torn step-4 (tmp debris), step-2 complete
    ck = tmp_path / "b" / "checkpoints"
    assert not (ck / "step-00000004").exists() and any(".tmp-" in p.name for p in ck.iterdir())
    resumed = train_dit(cfg)
    assert not any(".tmp-" in p.name for p in ck.iterdir())
    for sub in ("transformer", "transformer_ema"):
        assert sha(straight / sub / W) == sha(resumed / sub / W)
    assert sha(straight / "transformer_lora" / "adapter.safetensors") == sha(resumed / "transformer_lora" / "adapter.safetensors")
    # LoRA export: merged weights load strictly; only the adapted projections differ from the base
    base, merged = weights(assets[0] / "transformer"), weights(straight / "transformer")
    assert merged.keys() == base.keys()
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    assert changed and all(k.rsplit(".", 2)[-2] in ("to_q", "to_k", "to_v", "0") for k in changed), changed
    ThinkGenTransformer2DModel.from_pretrained(straight / "transformer_ema")
    # the exported adapter folder (adapter_config.json + tensors) merged into the base gives the merged export
    from thinkgen.lora import merge_adapter

    plain = ThinkGenTransformer2DModel.from_pretrained(assets[0] / "transformer")
    assert merge_adapter(plain, straight / "transformer_lora")["r"] == 4
    got = plain.state_dict()
    for k, v in merged.items():
        torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-6)


def test_feature_cache_gives_identical_training(assets, tmp_path):
    plain = train_dit(cfg_for(assets, tmp_path / "a", max_steps=3, save_every=0))
    fc = str(tmp_path / "fc")
    cold = train_dit(cfg_for(assets, tmp_path / "b", max_steps=3, save_every=0, feature_cache_dir=fc))
    warm = train_dit(cfg_for(assets, tmp_path / "c", max_steps=3, save_every=0, feature_cache_dir=fc))
    assert len(list(Path(fc).rglob("*.safetensors"))) > 0
    assert sha(plain / "transformer" / W) == sha(cold / "transformer" / W) == sha(warm / "transformer" / W)


def test_resume_refuses_a_changed_config(assets, tmp_path):
    train_dit(cfg_for(assets, tmp_path / "a", max_steps=3))
    with pytest.raises(ConfigError, match=r"lr: 0.001 -> 0.002"):
        train_dit(cfg_for(assets, tmp_path / "a", max_steps=3, lr=2e-3))
    out = train_dit(cfg_for(assets, tmp_path / "a", max_steps=3, lr=2e-3, allow_config_change=["lr"]))
    assert verify_manifest(out)["meta"]["step"] == 3
    assert train_dit(cfg_for(assets, tmp_path / "a", max_steps=3, lr=2e-3, resume="never", log_every=1)).is_dir()


def test_resume_keeps_the_optimiser_state_but_takes_the_configs_hyperparameters():
    """torch's load_state_dict would bring the saved lr, weight decay and schedule back; load_optim_state keeps the
    Adam moments and the schedule position from the checkpoint and everything the config sets from the config."""
    from thinkgen.train.loop import LRLambda, load_optim_state

    def make(lr, wd, total):
        model = torch.nn.Linear(3, 2)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
        return model, opt, torch.optim.lr_scheduler.LambdaLR(opt, LRLambda(2, total, "cosine", 0.1))

    torch.manual_seed(0)
    model, opt, sched = make(1e-3, 0.01, 10)
    for _ in range(3):
        model(torch.randn(4, 3)).square().sum().backward()
        opt.step(), opt.zero_grad(), sched.step()
    saved_opt, saved_sched = opt.state_dict(), sched.state_dict()
    model2, opt2, sched2 = make(2e-3, 0.05, 20)
    model2.load_state_dict(model.state_dict())
    changed = load_optim_state(model2, opt2, sched2, saved_opt, saved_sched)
    assert sched2.last_epoch == 3
    want = 2e-3 * LRLambda(2, 20, "cosine", 0.1)(3)
    assert opt2.param_groups[0]["lr"] == pytest.approx(want) and sched2.get_last_lr() == [pytest.approx(want)]
    assert opt2.param_groups[0]["weight_decay"] == 0.05
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(opt.state[p]["exp_avg"], opt2.state[q]["exp_avg"])
    assert any("lr: 0.001 -> 0.002" in c for c in changed) and any("weight_decay" in c for c in changed)
    sched2.step()   # the schedule goes on from the config's shape
    assert opt2.param_groups[0]["lr"] == pytest.approx(2e-3 * LRLambda(2, 20, "cosine", 0.1)(4))
    # an unchanged config changes nothing
    model3, opt3, sched3 = make(1e-3, 0.01, 10)
    assert load_optim_state(model3, opt3, sched3, saved_opt, saved_sched) == []
    assert opt3.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])


def test_sample_grid_is_logged(assets, tmp_path):
    cfg = cfg_for(assets, tmp_path / "run", max_steps=2, save_every=0, sample_every=2, sample_steps=2,
                  sample_prompts=["a red square", "a blue circle"])
    train_dit(cfg)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "run" / "logs"), size_guidance={"images": 0})
    acc.Reload()
    assert "samples" in acc.Tags()["images"]
    assert {"train/loss", "train/lr", "train/grad_norm", "train/samples_per_s"} <= set(acc.Tags()["scalars"])


def test_cli_main_train(assets, tmp_path, capsys):
    from thinkgen.train.cli import main_train

    model, data = assets
    y = tmp_path / "cfg.yaml"
    y.write_text(f"stage: stage1\nmodel_dir: {model}\ndata: [{data}]\noutput_dir: {tmp_path / 'run'}\n"
                 "batch_size: 2\nwarmup_steps: 0\n")
    assert main_train(["dit", "--config", str(y), "--max_steps=1", "--print-config"]) == 0
    assert "stage: stage1" in capsys.readouterr().out
    assert main_train(["dit", "--config", str(y), "--max_steps=2", "--save_every=0", "--grad_accum_steps=2",
                       "--lr_schedule=cosine", "--warmup_steps=1"]) == 0
    assert main_train(["--help"]) == 0 and "thinkgen train" in capsys.readouterr().out
    assert (tmp_path / "run" / "final" / "transformer" / W).is_file()
    with pytest.raises(ConfigError, match="unknown config key 'stepz'"):
        main_train(["dit", "--config", str(y), "--stepz=1"])


def _torchrun(bounded, args: list[str], timeout: int, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("THINKGEN_FAULT", None)
    if fault:
        env["THINKGEN_FAULT"] = fault
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "thinkgen.train.cli", *args]
    return bounded(cmd, env=env, cwd=str(REPO), timeout=timeout, what="2-process torchrun")


@pytest.mark.parametrize("strategy", ["ddp", pytest.param("fsdp2", marks=pytest.mark.slow)])
def test_torchrun_two_processes_gloo(assets, tmp_path, strategy, bounded):
    """2 processes on gloo finish and export; one retry for a flaky CPU launch (ecosystem.md §9.17).

    Lines alternate edit / t2i and the shuffle buffer is 1, so rank 0 always has reference images and rank 1
    never: the ranks run different modules (the reference refiner), which must not desynchronise collectives.
    """
    model, data = assets
    rows = [json.loads(l) for l in data.read_text().splitlines()]
    edits, t2i = [r for r in rows if r["task_type"] == "edit"], [r for r in rows if r["task_type"] == "t2i"]
    alternating = data.parent / "alternating.jsonl"
    alternating.write_text("".join(json.dumps(r) + "\n" for pair in zip(edits, t2i) for r in pair))
    out = tmp_path / "run"
    args = ["dit", f"--model_dir={model}", f"--data=[{alternating}]", f"--output_dir={out}", "--batch_size=1",
            "--max_steps=3", "--save_every=2", "--warmup_steps=0", "--device=cpu", f"--parallel={strategy}",
            "--shuffle_buffer=1", "--log_every=1", "--prompt_dropout_prob=0"]
    for attempt in range(2):
        proc = _torchrun(bounded, args, timeout=240)
        if proc.returncode == 0:
            break
        shutil.rmtree(out, ignore_errors=True)
    else:
        pytest.fail(f"torchrun failed twice:\n{proc.stderr[-3000:]}")
    final = out / "final"
    verify_manifest(final)
    ThinkGenTransformer2DModel.from_pretrained(final / "transformer")
    ranks = sorted(p.name for p in (out / "checkpoints" / "step-00000002" / "trainer_state").glob("rank*.pt"))
    assert ranks == ["rank0.pt", "rank1.pt"]
    assert [m["step"] for m in metrics(out)] == [1, 2, 3]


def test_gradient_checkpointing_gives_identical_weights(assets, tmp_path):
    a = train_dit(cfg_for(assets, tmp_path / "a", max_steps=2, save_every=0))
    b = train_dit(cfg_for(assets, tmp_path / "b", max_steps=2, save_every=0, gradient_checkpointing=True))
    assert sha(a / "transformer" / W) == sha(b / "transformer" / W)


@pytest.mark.slow   # inductor compiles the tiny DiT's blocks: about two minutes on a cold cache
def test_compile_trains_to_the_same_weights_within_rounding(assets, tmp_path):
    from safetensors.torch import load_file

    a = train_dit(cfg_for(assets, tmp_path / "a", max_steps=2, save_every=0))
    b = train_dit(cfg_for(assets, tmp_path / "b", max_steps=2, save_every=0, compile=True))
    wa, wb = load_file(str(a / "transformer" / W)), load_file(str(b / "transformer" / W))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-5)


def test_merged_lora_state_reproduces_the_adapted_model(assets):
    from types import SimpleNamespace

    from thinkgen.train.models import add_lora, merge_lora_state

    dit = ThinkGenTransformer2DModel.from_pretrained(assets[0] / "transformer")
    torch.manual_seed(0)
    add_lora(dit, SimpleNamespace(lora_rank=4, lora_alpha=8.0, lora_dropout=0.0,
                                  lora_target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with torch.no_grad():
        for n, p in dit.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    plain = ThinkGenTransformer2DModel.from_pretrained(assets[0] / "transformer")
    plain.load_state_dict(merge_lora_state(dit.state_dict(), 8.0 / 4), strict=True)
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, 4, 16, 16, generator=g), torch.rand(2, generator=g)
    feats, mask = torch.randn(2, 5, 64, generator=g), torch.ones(2, 5, dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(dit(x, t, feats, mask), plain(x, t, feats, mask), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_bf16_without_cuda_is_refused(assets, tmp_path):
    with pytest.raises(ConfigError, match="bf16"):
        train_dit(cfg_for(assets, tmp_path / "run", mixed_precision="bf16"))


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_torchrun_resume_is_bit_identical(assets, tmp_path, strategy, bounded):
    """T1 distributed variant: 2 gloo processes killed after step 3, resumed -> same weights as a straight run."""
    model, data = assets

    def args(out):
        return ["dit", f"--model_dir={model}", f"--data=[{data}]", f"--output_dir={out}", "--batch_size=1",
                "--max_steps=4", "--save_every=2", "--warmup_steps=0", "--device=cpu", f"--parallel={strategy}",
                "--shuffle_buffer=2", "--lr=1e-3", "--ema_decay=0.9"]

    assert _torchrun(bounded, args(tmp_path / "a"), timeout=240).returncode == 0
    killed = _torchrun(bounded, args(tmp_path / "b"), timeout=240, fault="step:3")
    assert killed.returncode != 0 and "FaultInjected" in killed.stderr
    assert _torchrun(bounded, args(tmp_path / "b"), timeout=240).returncode == 0
    for sub in ("transformer", "transformer_ema"):
        assert sha(tmp_path / "a" / "final" / sub / W) == sha(tmp_path / "b" / "final" / sub / W)


def test_lr_schedule():
    from thinkgen.train.loop import LRLambda

    const = LRLambda(warmup=4, total=20, schedule="constant", min_ratio=0.0)
    assert [const(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cos = LRLambda(warmup=0, total=10, schedule="cosine", min_ratio=0.1)
    assert cos(0) == 1.0 and abs(cos(5) - 0.55) < 1e-9 and abs(cos(10) - 0.1) < 1e-9 and cos(50) == cos(10)


def test_all_prompts_and_refs_dropped(assets, tmp_path):
    """CFG dropout of everything: empty instructions (zero text tokens) and no references still train."""
    cfg = cfg_for(assets, tmp_path / "run", max_steps=2, save_every=0, prompt_dropout_prob=1.0, ref_dropout_prob=1.0,
                  feature_cache_dir=str(tmp_path / "fc"))
    final = train_dit(cfg)
    assert all(m["train/loss"] > 0 for m in metrics(tmp_path / "run"))
    assert (final / "transformer" / W).is_file()


def test_explicit_resume_from_a_torn_checkpoint_is_an_error(assets, tmp_path):
    from thinkgen.errors import CheckpointError

    torn = tmp_path / "step-00000009"
    torn.mkdir()
    with pytest.raises(CheckpointError, match="incomplete"):
        train_dit(cfg_for(assets, tmp_path / "run", resume=str(torn)))


def test_dit_focus_bench_refuses_start_ema_without_ema_weights(tmp_path, capsys, bench_module):
    mod = bench_module("nano_dit_focus")
    start = tmp_path / "start"
    (start / "transformer").mkdir(parents=True)
    (start / "model_index.json").write_text("{}")
    with pytest.raises(SystemExit):
        mod.main(["--start", str(start), "--start-ema", "--out", str(tmp_path / "out"), "--data-seed", "1"])
    assert "has no transformer_ema/" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()           # nothing written


def test_lazy_rewriter_bench_data_and_refusals(tmp_path, capsys, bench_module):
    """bench/nano_lazy_rewriter.py: the given share of reasoning answers becomes the request verbatim (thought
    kept), nothing else changes, image paths become absolute; a run folder without SFT data is refused, unwritten."""
    import json

    mod = bench_module("nano_lazy_rewriter")
    data = tmp_path / "run" / "data"
    data.mkdir(parents=True)
    recs = [{"family": "reasoning", "instruction": f"as many stars as {i} plus one", "think": "t", "answer": "two stars",
             "output_image": "images/0.png"} for i in range(40)]
    recs += [{"family": "understanding", "instruction": "how many?", "answer": "two", "input_images": ["images/1.png"]}]
    (data / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    for rate, want in ((0.0, 0), (1.0, 40)):
        out, n, k = mod.lazy_records(data / "sft.jsonl", rate, seed=10)
        assert (n, k) == (40, want)
        assert sum(r["answer"] == r["instruction"] for r in out[:40]) == want
        assert all(r["think"] == "t" for r in out[:40]) and out[40]["answer"] == "two"
        assert out[40]["input_images"] == [str((data / "images" / "1.png").resolve())]
    half = mod.lazy_records(data / "sft.jsonl", 0.5, seed=10)[2]
    assert 0 < half < 40 and half == mod.lazy_records(data / "sft.jsonl", 0.5, seed=10)[2]   # seeded
    with pytest.raises(SystemExit):
        mod.main(["--run", str(tmp_path / "nowhere"), "--start", str(tmp_path), "--out", str(tmp_path / "out")])
    assert "has no data/sft.jsonl" in capsys.readouterr().err and not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):
        mod.main(["--run", str(tmp_path / "run"), "--start", str(tmp_path), "--out", str(tmp_path / "out"),
                  "--lazy-rate", "1.5"])
    assert "--lazy-rate=1.5 must be in [0, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit):    # --mllm-start replaces the run's SFT MLLM, and must be a released layout
        mod.main(["--run", str(tmp_path / "run"), "--start", str(tmp_path), "--out", str(tmp_path / "out"),
                  "--mllm-start", str(tmp_path / "run")])
    assert "--mllm-start" in (err := capsys.readouterr().err) and "has no mllm/ and processor/" in err
    assert not (tmp_path / "out").exists()


def test_deepen_bench_grows_the_shipped_mllm_unchanged(tmp_path, capsys, bench_module):
    """bench/nano_deepen.py on the shipped nano MLLM: one more layer, or twice the heads and a wider MLP; features
    and greedy answers checked equal before writing, mllm/ + processor/ written; an existing output, nothing to grow,
    a bad --head-factor, a shrinking MLP and binding tokens the shipped tokenizer already has are refused, nothing
    written. nano_focus_phase.py --binding refuses a start whose tokenizer lacks the binding words."""
    import json

    from thinkgen.nano.models import build_nano_tokenizer
    from thinkgen.pipeline import default_model_path

    mod = bench_module("nano_deepen")
    shipped = default_model_path()
    assert mod.main(["--start", str(shipped), "--out", str(tmp_path / "deep"), "--add", "1"]) == 0
    assert "feature max diff 0.00e+00" in capsys.readouterr().out
    cfg = json.loads((tmp_path / "deep" / "mllm" / "config.json").read_text())
    n = json.loads((shipped / "mllm" / "config.json").read_text())["text_config"]["num_hidden_layers"]
    assert cfg["text_config"]["num_hidden_layers"] == n + 1 and (tmp_path / "deep" / "processor").is_dir()
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["mllm", "processor"]
    assert mod.main(["--start", str(shipped), "--out", str(tmp_path / "wide"), "--head-factor", "2",
                     "--intermediate", "512"]) == 0
    assert "8 greedy answers equal" in capsys.readouterr().out
    tc = json.loads((tmp_path / "wide" / "mllm" / "config.json").read_text())["text_config"]
    old = json.loads((shipped / "mllm" / "config.json").read_text())["text_config"]
    assert (tc["num_attention_heads"], tc["num_key_value_heads"], tc["intermediate_size"], tc["vocab_size"]) == (
        2 * old["num_attention_heads"], 2 * old["num_key_value_heads"], 512, old["vocab_size"])
    # a start whose tokenizer lacks the binding words (a fresh nano tokenizer) is refused by the focus phase
    phase = bench_module("nano_focus_phase")
    bare = tmp_path / "bare"
    (bare / "mllm").mkdir(parents=True)
    build_nano_tokenizer().save_pretrained(bare / "processor")
    (tmp_path / "und").mkdir()
    for f in ("captions.jsonl", "sft_gen.jsonl"):
        (tmp_path / "und" / f).write_text("")
    with pytest.raises(SystemExit):
        phase.main(["--anchor", str(shipped), "--und", str(tmp_path / "und"), "--start", str(bare), "--out",
                    str(tmp_path / "f"), "--data-seed", "1", "--binding"])
    assert "--binding needs the binding words as tokens" in capsys.readouterr().err and not (tmp_path / "f").exists()
    for argv, needle in ((["--out", str(tmp_path / "deep"), "--add", "1"], "exists"),
                         (["--out", str(tmp_path / "d2"), "--add", "0"], "nothing to grow"),
                         (["--out", str(tmp_path / "d2"), "--head-factor", "0"], "--head-factor=0 >= 1"),
                         (["--out", str(tmp_path / "d2"), "--intermediate", "8"], "intermediate_size=8 is below"),
                         (["--out", str(tmp_path / "d2"), "--binding-tokens"], "'redcircle' already is one token")):
        with pytest.raises(SystemExit):
            mod.main(["--start", str(shipped)] + argv)
        assert needle in capsys.readouterr().err
    assert not (tmp_path / "d2").exists()


def test_grpo_signal_bench_reports_vote_accuracy(capsys, bench_module):
    """bench/nano_grpo_signal.py on the shipped model (2 questions, groups of 2): greedy, sampled, mixed-group and
    majority-vote accuracies in [0, 1], and the greedy chat-mode answers equal chat()'s."""
    import json

    mod = bench_module("nano_grpo_signal")
    assert mod.main(["--n", "2", "--group", "2"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["greedy_equals_chat"] == "2/2"
    for k in ("greedy", "sampled", "mixed_groups", "vote", "vote_with_greedy"):
        assert 0.0 <= res[k] <= 1.0, k
    with pytest.raises(SystemExit):
        mod.main(["--n", "2", "--group", "1"])


def test_near_miss_weight_bench(tmp_path, capsys, bench_module):
    """bench/nano_near_miss_weight.py: a question is a near miss when an object shares exactly one of the asked colour
    and kind; near misses are repeated --weight times, the images folder is linked, a bad weight is refused."""
    import json

    mod = bench_module("nano_near_miss_weight")
    cap = "small cyan square top left , large purple star centre , sign AB"
    assert mod.caption_objects(cap + " ; cyan star none") == [("cyan", "square"), ("purple", "star")]
    assert mod.near_miss("is there a cyan star?", cap)                    # cyan square / purple star share one
    assert not mod.near_miss("is there a cyan square?", cap)              # the object itself shares both
    assert not mod.near_miss("is there a red circle?", cap)               # nothing shares either
    assert mod.near_miss("is the purple star left of the cyan circle?", cap)
    assert not mod.near_miss("how many stars are there?", cap)            # counts are left alone
    src = tmp_path / "a" / "vqa.jsonl"
    (src.parent / "images").mkdir(parents=True)
    recs = [{"instruction": "is there a cyan star?", "think": cap}, {"instruction": "where is the cyan square?",
                                                                       "think": cap}]
    src.write_text("".join(json.dumps(r) + "\n" for r in recs))
    dst = tmp_path / "b" / "vqa.jsonl"
    assert mod.main([str(src), str(dst), "--weight", "3"]) == 0
    assert [json.loads(ln)["instruction"] for ln in dst.read_text().splitlines()] == \
        ["is there a cyan star?"] * 3 + ["where is the cyan square?"]
    assert (dst.parent / "images").resolve() == (src.parent / "images").resolve()
    for argv, needle in (([str(src), str(dst)], "exists"), ([str(src), str(tmp_path / "c.jsonl"), "--weight", "0"],
                                                             "--weight=0")):
        with pytest.raises(SystemExit):
            mod.main(argv)
        assert needle in capsys.readouterr().err


def test_heldout_census_covers_what_the_generator_holds_out(bench_module):
    """bench/nano_heldout_census.py enumerates the spaces the composition generator draws from: every held-out prompt
    the generator makes is in the census, and the census counts equal the generator's once its space is exhausted."""
    from thinkgen.nano.prompts import generate

    mod = bench_module("nano_heldout_census")
    rows = mod.census()
    for cat in ("single_object", "two_object", "counting", "position"):
        space = {mod.rendered_caption(s) for s in mod.spec_space(cat)}
        drawn = {s.prompt for s in generate("composition", 200, seed=3, split="heldout", categories=(cat,))}
        assert drawn <= space
        assert len(drawn) == rows[cat]["heldout_prompts"]
    assert rows["two_object"]["heldout_specs"] * 2 == rows["two_object"]["heldout_prompts"]  # one spec, both orders
