"""The `thinkgen` command line on a tiny checkpoint."""
import json
import subprocess
import sys

import pytest
from PIL import Image

from thinkgen.cli import main


def _gen(tiny_ckpt, out, *extra):
    return main(["generate", *extra, "--model", str(tiny_ckpt), "--out", str(out), "--steps", "2",
                 "--height", "32", "--width", "32", "--quiet"])


def test_generate_writes_png_and_sidecar(tiny_ckpt, tmp_path, capsys):
    assert _gen(tiny_ckpt, tmp_path / "o", "a red circle") == 0
    files = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert files == ["a-red-circle.json", "a-red-circle.png"]
    meta = json.loads((tmp_path / "o" / "a-red-circle.json").read_text())
    assert meta["prompt"] == "a red circle" and meta["seed"] == 0
    assert meta["settings"]["num_inference_steps"] == 2 and "total" in meta["timings_s"]
    assert Image.open(tmp_path / "o" / "a-red-circle.png").size == (32, 32)


def test_generate_think_prints_thoughts(tiny_ckpt, tmp_path, capsys):
    rc = main(["generate", "a cat", "--think", "--max-think-tokens", "2", "--max-answer-tokens", "3", "--model", str(tiny_ckpt),
               "--out", str(tmp_path), "--steps", "1", "--height", "32", "--width", "32"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "thoughts:" in out and "wrote" in out
    assert json.loads((tmp_path / "a-cat.json").read_text())["thoughts"]


def test_edit_and_batch(tiny_ckpt, tmp_path):
    img = tmp_path / "in.png"
    Image.new("RGB", (32, 32), (255, 0, 0)).save(img)
    rc = main(["edit", str(img), "make it blue", "--model", str(tiny_ckpt), "--out", str(tmp_path / "e"),
               "--steps", "1", "--quiet"])
    assert rc == 0 and (tmp_path / "e" / "make-it-blue.png").is_file()
    assert _gen(tiny_ckpt, tmp_path / "b", "a cat", "a dog") == 0
    assert len(list((tmp_path / "b").glob("*.png"))) == 2


@pytest.mark.parametrize(
    "args",
    [
        ["generate", "", "--steps", "2"],
        ["generate", "a cat", "--steps", "0"],
        ["generate", "a cat", "--height", "-64"],
        ["generate", "a cat", "--text-guidance", "nan"],
    ],
)
def test_bad_input_exit_2_and_nothing_written(tiny_ckpt, tmp_path, args, capsys):
    out = tmp_path / "o"
    rc = main([*args, "--model", str(tiny_ckpt), "--out", str(out), "--quiet"])
    assert rc == 2
    assert "error" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_bad_image_and_too_many(tiny_ckpt, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    assert main(["edit", str(bad), "fix it", "--model", str(tiny_ckpt), "--out", str(tmp_path / "o")]) == 2
    img = tmp_path / "ok.png"
    Image.new("RGB", (32, 32)).save(img)
    assert main(["edit", *[str(img)] * 6, "fix it", "--model", str(tiny_ckpt), "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_missing_model_exit_3(tmp_path, capsys):
    rc = main(["generate", "a cat", "--model", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")])
    assert rc == 3 and "checkpoint" in capsys.readouterr().err


def test_info_and_chat(tiny_ckpt, capsys):
    assert main(["info", "--model", str(tiny_ckpt)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["transformer"]["num_prepad_tokens"] == 3
    assert main(["chat", "hello", "--max-new-tokens", "3", "--model", str(tiny_ckpt)]) == 0


def test_help_runs():
    r = subprocess.run([sys.executable, "-m", "thinkgen.cli", "generate", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--think" in r.stdout and "--out" in r.stdout


def test_prompts_file_batches_resumes_and_gives_each_line_its_own_seed(tiny_ckpt, tmp_path, capsys):
    txt = tmp_path / "prompts.txt"
    txt.write_text("a red circle\n\na blue square\na green star\n")
    out = tmp_path / "o"
    assert _gen(tiny_ckpt, out, "--prompts-file", str(txt), "--batch-size", "2", "--num-images", "2") == 0
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["00000-a-red-circle-0.png", "00000-a-red-circle-1.png", "00001-a-blue-square-0.png",
                    "00001-a-blue-square-1.png", "00002-a-green-star-0.png", "00002-a-green-star-1.png"]
    seeds = [json.loads((out / p.replace(".png", ".json")).read_text())["seed"] for p in pngs]
    assert seeds == [0, 1, 2, 3, 4, 5]
    # one line done by batch size 1 equals the batch-2 result (seeds depend on the line, not the batch)
    (out / "00002-a-green-star-0.png").unlink()
    capsys.readouterr()
    assert _gen(tiny_ckpt, tmp_path / "solo", "--prompts-file", str(txt), "--batch-size", "1", "--num-images", "2") == 0
    assert _gen(tiny_ckpt, out, "--prompts-file", str(txt), "--num-images", "2") == 0
    assert "skipping 2 prompts" in capsys.readouterr().out
    a, b = (Image.open(d / "00002-a-green-star-0.png") for d in (out, tmp_path / "solo"))
    assert a.tobytes() == b.tobytes()


def test_prompts_file_jsonl_names_seeds_and_errors(tiny_ckpt, tmp_path, capsys):
    jl = tmp_path / "p.jsonl"
    jl.write_text(json.dumps({"prompt": "a cat", "seed": 42, "name": "cat"}) + "\n" + json.dumps({"prompt": "a dog"}) + "\n")
    assert _gen(tiny_ckpt, tmp_path / "o", "--prompts-file", str(jl)) == 0
    assert json.loads((tmp_path / "o" / "cat.json").read_text())["seed"] == 42
    assert json.loads((tmp_path / "o" / "00001-a-dog.json").read_text())["seed"] == 1
    capsys.readouterr()
    for text, words in [('{"prompt": 3}\n', 'needs a "prompt" string'), ("{bad\n", "p.jsonl:1 is not JSON"),
                        ('{"prompt": "x", "name": "../x"}\n', "name must be"),
                        ('{"prompt": "x", "name": "a"}\n{"prompt": "y", "name": "a"}\n', "used twice")]:
        jl.write_text(text)
        assert _gen(tiny_ckpt, tmp_path / "bad", "--prompts-file", str(jl)) == 2
        assert words in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    assert _gen(tiny_ckpt, tmp_path / "bad", "a cat", "--prompts-file", str(jl)) == 2
    assert "not both" in capsys.readouterr().err
    assert _gen(tiny_ckpt, tmp_path / "bad") == 2
    assert "--prompts-file" in capsys.readouterr().err
