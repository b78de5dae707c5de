"""The benchmark harness (thinkgen.evals): official rules on hand-built inputs, the local observers on tiny random
models, and generate -> score end to end on the shipped nano model."""
import csv
import http.server
import json
import threading

import pytest
import torch
from PIL import Image, ImageDraw

from thinkgen.cli import main as cli
from thinkgen.errors import ConfigError, InvalidInputError
from thinkgen.evals import cvtg, dpg, geneval, wise
from thinkgen.evals.common import grid_2x2, item_seed
from thinkgen.rl.rewards import Detection


def _img(w=64, h=64, colour=(128, 128, 128)):
    return Image.new("RGB", (w, h), colour)


# ----------------------------------------------------------------------------------------------------- GenEval
def test_geneval_bundled_metadata_is_the_official_set():
    rows = geneval.load_metadata()
    counts = {t: sum(r["tag"] == t for r in rows) for t in geneval.TAGS}
    assert len(rows) == 553 and counts == {"single_object": 80, "two_object": 99, "counting": 80, "colors": 94,
                                           "position": 100, "color_attr": 100}


def _score(dets, meta, colour=None):
    return geneval.score_image(dets, meta, colour, _img() if colour else None)


def test_geneval_rules_counting_threshold_colour_position_exclude():
    count3 = {"tag": "counting", "include": [{"class": "cup", "count": 3}], "exclude": [{"class": "cup", "count": 4}]}
    cups = [Detection("cup", (0, 0, 5, 5), s) for s in (0.95, 0.93, 0.91)]
    assert _score(cups, count3)["correct"]
    assert not _score(cups[:2] + [Detection("cup", (0, 0, 5, 5), 0.85)], count3)["correct"]    # 0.9 for counting
    assert not _score(cups + [Detection("cup", (0, 0, 5, 5), 0.92)], count3)["correct"]        # exclude: 4 cups

    red_dog = {"tag": "colors", "include": [{"class": "dog", "count": 1, "color": "red"}]}
    dog = [Detection("dog", (0, 0, 10, 10), 0.5)]
    assert _score(dog, red_dog, colour=lambda im, d: "red")["correct"]
    assert not _score(dog, red_dog, colour=lambda im, d: "blue")["correct"]
    with pytest.raises(ConfigError, match="colour classifier"):
        _score(dog, red_dog)

    left = {"tag": "position", "include": [{"class": "dog", "count": 1},
                                           {"class": "cat", "count": 1, "position": ["left of", 0]}]}
    assert _score([Detection("dog", (40, 0, 60, 20), 0.9), Detection("cat", (0, 0, 20, 20), 0.9)], left)["correct"]
    assert not _score([Detection("dog", (0, 0, 20, 20), 0.9), Detection("cat", (40, 0, 60, 20), 0.9)], left)["correct"]
    assert not _score([Detection("dog", (40, 0, 60, 20), 0.3), Detection("cat", (0, 0, 20, 20), 0.9)], left)["correct"]  # 0.3 is not > 0.3


def test_geneval_summary_is_the_mean_of_tag_scores():
    recs = [{"tag": "single_object", "correct": True}, {"tag": "single_object", "correct": False},
            {"tag": "counting", "correct": True}]
    s = geneval.summarise(recs)
    assert s["tags"] == {"single_object": 0.5, "counting": 1.0} and s["overall"] == 0.75 and not s["complete"]


@pytest.fixture(scope="module")
def tiny_mask2former(tmp_path_factory):
    pytest.importorskip("scipy")
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig
    from transformers.models.mask2former.image_processing_pil_mask2former import Mask2FormerImageProcessorPil

    d = tmp_path_factory.mktemp("m2f")
    sw = SwinConfig(image_size=64, patch_size=4, embed_dim=32, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                    window_size=2, out_features=["stage1", "stage2", "stage3", "stage4"])
    labels = {0: "mouse", 1: "dog", 2: "cup"}
    cfg = Mask2FormerConfig(backbone_config=sw, use_pretrained_backbone=False, feature_size=32, mask_feature_size=32,
                            hidden_dim=32, encoder_feedforward_dim=32, dim_feedforward=32, encoder_layers=1,
                            decoder_layers=2, num_attention_heads=2, num_queries=5, num_labels=3, id2label=labels,
                            label2id={v: k for k, v in labels.items()}, common_stride=4)
    torch.manual_seed(0)
    Mask2FormerForUniversalSegmentation(cfg).save_pretrained(d)
    Mask2FormerImageProcessorPil(size={"shortest_edge": 64, "longest_edge": 64}).save_pretrained(d)
    return d


def test_geneval_local_detector_and_colour_classifier(tiny_mask2former, tiny_clip_dir):
    det = geneval.TransformersDetector(tiny_mask2former)
    img = _img(64, 48, (200, 20, 20))
    found = det(img)
    assert found and {d.label for d in found} <= {"computer mouse", "dog", "cup"}    # COCO "mouse" -> GenEval name
    for d in found:
        x1, y1, x2, y2 = d.box
        assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 48 and 0 <= d.score <= 1 and tuple(d.mask.shape) == (48, 64)
    crop = geneval.colour_crop(img, found[0])
    assert crop.size[0] >= 1 and crop.size[1] >= 1
    colour = geneval.ClipColourClassifier(tiny_clip_dir)
    assert colour(img, found[0]) in geneval.COLORS
    with pytest.raises(ConfigError, match="LOCAL directory"):
        geneval.TransformersDetector("/nonexistent/detector")


def test_geneval_generate_then_score_end_to_end(tmp_path, tiny_mask2former, tiny_clip_dir, capsys):
    out = tmp_path / "gv"
    assert cli(["eval", "geneval", "generate", "--out", str(out), "--limit", "3", "--steps", "2",
                "--images-per-prompt", "2", "--batch-size", "2"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["generated"] == 3
    rows = geneval.load_metadata()
    for i in range(3):
        assert json.loads((out / f"{i:05d}" / "metadata.jsonl").read_text()) == rows[i]
        assert sorted(p.name for p in (out / f"{i:05d}" / "samples").iterdir()) == ["0000.png", "0001.png"]
    log = [json.loads(x) for x in (out / "thinkgen_generation.jsonl").read_text().splitlines()]
    assert [r["seeds"] for r in log] == [[0, 1], [2, 3], [4, 5]]
    # resume: nothing left to do; a different batch size gives the same pixels (seeds follow the item index)
    assert cli(["eval", "geneval", "generate", "--out", str(out), "--limit", "3", "--steps", "2",
                "--images-per-prompt", "2"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) ["generated"] == 0
    other = tmp_path / "gv1"
    cli(["eval", "geneval", "generate", "--out", str(other), "--limit", "3", "--steps", "2", "--images-per-prompt", "2",
         "--batch-size", "1"])
    capsys.readouterr()
    a, b = (Image.open(d / "00002" / "samples" / "0001.png") for d in (out, other))
    assert a.tobytes() == b.tobytes()
    assert cli(["eval", "geneval", "score", "--images", str(out), "--detector", str(tiny_mask2former),
                "--clip", str(tiny_clip_dir)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert len(res["records"]) == 6 and res["summary"]["tags"].keys() == {"single_object"}
    assert res["meta"]["detector"] == str(tiny_mask2former) and res["meta"]["generation"]["settings"]["seed"] == 0
    assert res["meta"]["generation"]["quantization"] is None and res["meta"]["generation"]["loras"] == []
    assert "overall (mean of tags)" in (out / "results.md").read_text()


def test_item_seeds_never_overlap():
    assert [item_seed(10, i, 4) for i in range(3)] == [10, 14, 18]


# ----------------------------------------------------------------------------------------------------- CVTG-2K
def test_cvtg_words_accuracy_and_ned():
    assert cvtg.gt_words("a sign reading 'Hello World' and a cup saying 'TEA'") == ["hello", "world", "tea"]
    ws = cvtg.word_scores(["hello", "world", "tea"], ["HELLO wor1d", "coffee"])
    assert [r for r, _ in ws] == [True, False, False]
    assert ws[0][1] == pytest.approx(1.0, abs=1e-5) and ws[1][1] == pytest.approx(1 - 1 / 5, abs=1e-5)
    assert cvtg.word_scores(["tea"], []) == [(False, pytest.approx(1 - 3 / 3, abs=1e-4))]   # nothing read: ['']
    assert cvtg.word_scores(["tea"], None) == [(False, 0.0)]                                   # the OCR failed


def _cvtg_data(root):
    (root / "CVTG").mkdir(parents=True)
    (root / "CVTG" / "2.json").write_text(json.dumps({"data_list": [
        {"index": 0, "prompt": "a poster that says 'OPEN' and 'NOW'"},
        {"index": 1, "prompt": "a mug with 'TEA' and 'CUP'"}]}))
    (root / "CVTG-Style").mkdir()
    (root / "CVTG-Style" / "3_combined.json").write_text(json.dumps({"7": "a sign 'A' 'B' 'C'"}))
    return root


def test_cvtg_layout_and_scoring_with_an_ocr_reader(tmp_path):
    data = _cvtg_data(tmp_path / "cvtg2k")
    todo = cvtg.items(tmp_path / "out", data)
    assert [str(it.outputs[0].relative_to(tmp_path / "out")) for it in todo] == [
        "CVTG/2/0.png", "CVTG/2/1.png", "CVTG-Style/3/7.png"]
    for it in todo[:2]:
        it.outputs[0].parent.mkdir(parents=True, exist_ok=True)
        _img().save(it.outputs[0])
    reads = {0: ["open now"], 1: ["tea"]}
    calls = iter([reads[0], reads[1]])
    records, missing = cvtg.score_folder(tmp_path / "out", data, ocr=lambda im: next(calls), progress=False)
    s = cvtg.summarise(records, missing)
    assert s["overall"]["word_accuracy"] == 0.75 and s["overall"]["words"] == 4 and s["missing_images"] == 1
    assert s["subsets"]["CVTG/2"]["images"] == 2 and not s["complete"]
    with pytest.raises(InvalidInputError, match="CVTG-2K folder"):
        cvtg.load_prompts(tmp_path / "nope")


def test_cvtg_real_ocr_reads_rendered_text(tmp_path):
    pytest.importorskip("rapidocr")
    from PIL import ImageFont

    img = Image.new("RGB", (320, 96), "white")
    ImageDraw.Draw(img).text((16, 24), "OPEN NOW", fill="black", font=ImageFont.load_default(size=40))
    data = _cvtg_data(tmp_path / "cvtg2k")
    (tmp_path / "out" / "CVTG" / "2").mkdir(parents=True)
    img.save(tmp_path / "out" / "CVTG" / "2" / "0.png")
    records, _ = cvtg.score_folder(tmp_path / "out", data, progress=False)
    assert records[0]["right"] == [True, True], records[0]["ocr"]


# ----------------------------------------------------------------------------------------------------- DPG-Bench
def _dpg_csv(path):
    cols = ["item_id", "text", "keywords", "proposition_id", "dependency", "category_broad", "category_detailed",
            "tuple", "question_natural_language"]
    rows = [["a", "", "", 1, "0", "", "", "entity - whole (dog)", "Is there a dog?"],
            ["a", "", "", 2, "1", "", "", "attribute - color (dog, red)", "Is the dog red?"],
            ["a", "", "", 3, "0", "", "", "entity - whole (cat)", "Is there a cat?"],
            ["b", "", "", 1, "0", "", "", "entity - whole (cup)", "Is there a cup?"],
            ["b", "", "", 2, "1", "", "", "relation - spatial (cup, table, on)", "Is the cup on a table?"]]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        w.writerows(rows)
    return path


def test_dpg_questions_parity_and_dependency_zeroing(tmp_path):
    path = _dpg_csv(tmp_path / "dpg_bench.csv")
    fixed = dpg.load_questions(path, parity=False)
    parity = dpg.load_questions(path, parity=True)
    assert [q["qid"] for q in fixed["a"]] == [1, 2, 3] and [q["qid"] for q in parity["a"]] == [2, 3]
    assert fixed["a"][1]["parents"] == [1] and fixed["a"][1]["l1"] == "attribute"
    scores, orig = dpg.score_crop(fixed["a"], {1: "no", 2: "Yes, it is.", 3: "yes"})
    assert orig == {1: 0.0, 2: 1.0, 3: 1.0} and scores == {1: 0.0, 2: 0.0, 3: 1.0}
    assert dpg.is_yes("YES.") and not dpg.is_yes("no") and not dpg.is_yes("") and not dpg.is_yes("yesterday")


def test_dpg_scores_each_crop_and_aggregates(tmp_path):
    path = _dpg_csv(tmp_path / "dpg_bench.csv")
    out = tmp_path / "out"
    out.mkdir()
    red, blue = _img(8, 8, (255, 0, 0)), _img(8, 8, (0, 0, 255))
    grid_2x2([red, red, blue, blue])[0].save(out / "a.png")       # top row red, bottom row blue
    assert dpg.crops(Image.open(out / "a.png"))[2].getpixel((0, 0)) == (0, 0, 255)

    def vqa(crop, question):                                         # a rule-based VQA: answers from the pixels
        return "yes" if crop.getpixel((0, 0))[0] > 128 or "cat" in question else "no"

    for parity in (False, True):
        qs = dpg.load_questions(path, parity=parity)
        records, missing, failed = dpg.score_folder(out, qs, vqa, parity=parity, progress=False)
        s = dpg.summarise(records, missing, failed)
        if not parity:
            # red crops: 3/3, blue crops: dog no -> red zeroed, cat yes: 1/3; image = (1 + 1 + 1/3 + 1/3) / 4
            assert records[0]["crops"] == pytest.approx([1, 1, 1 / 3, 1 / 3])
            assert s["dpg_score"] == pytest.approx(100 * 2 / 3) and missing == ["b"]
            assert s["l2"]["attribute - color"] == pytest.approx(50.0)            # zeroed, all crops
        else:
            # parity: row 1 dropped, so item a's question 2 has a missing parent -> the item is dropped
            assert failed == ["a"] and records == [] and s["dpg_score"] is None


# ----------------------------------------------------------------------------------------------------- WISE
@pytest.mark.parametrize("reply, want", [
    ("**Consistency**: 2\n**Realism**: 1\n**Aesthetic Quality**: 0", {"consistency": 2, "realism": 1,
                                                                        "aesthetic quality": 0}),
    ("consistency：1 realism 2 Aesthetic Quality: 2", {"consistency": 1, "realism": 2, "aesthetic quality": 2}),
    ("blah\n2\n1\n1\n", {"consistency": 2, "realism": 1, "aesthetic quality": 1}),
    ("Consistency: 2\nRealism: 1", None),
    ("Consistency: 3\nRealism: 1\nAesthetic Quality: 1", None),
    ("", None),
])
def test_wise_judge_reply_parsing(reply, want):
    assert wise.parse_scores(reply) == want


def test_wise_categories_wiscore_and_overall():
    assert [wise.category(i) for i in (1, 400, 401, 567, 568, 700, 701, 800, 801, 900, 901, 1000, 1001)] == [
        "CULTURE", "CULTURE", "TIME", "TIME", "SPACE", "SPACE", "BIOLOGY", "BIOLOGY", "PHYSICS", "PHYSICS",
        "CHEMISTRY", "CHEMISTRY", None]
    assert wise.wiscore({"consistency": 2, "realism": 2, "aesthetic quality": 2}) == pytest.approx(1.0)
    assert wise.wiscore({"consistency": 1, "realism": 0, "aesthetic quality": 2}) == pytest.approx(0.45)
    g = torch.Generator().manual_seed(0)
    recs = []
    for i in range(1, 1001):
        s = dict(zip(wise.ASPECTS, torch.randint(0, 3, (3,), generator=g).tolist()))
        recs.append({"id": i, "category": wise.category(i), "wiscore": wise.wiscore(s)})
    full = wise.summarise(recs, [], [])
    assert full["complete"] and full["overall"] == pytest.approx(full["mean_of_scored"], abs=1e-9)  # weights = sizes
    part = wise.summarise(recs[:-1], [], [1000])
    assert not part["complete"] and part["overall"] is None and part["unparsed"] == [1000]


class _Judge(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible judge endpoint with fixed replies per benchmark; it records how many images it saw."""

    seen: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        parts = body["messages"][0]["content"]
        images = [p for p in parts if p["type"] == "image_url"]
        assert images and all(p["image_url"]["url"].startswith("data:image/png;base64,") for p in images)
        text = parts[-1]["text"]
        _Judge.seen.append(len(images))
        if "Final Score: 1\" if yes" in text:                   # RISEBench logical, as a thinking judge answers
            reply = "<think>Final Score: 0? no, look again.</think>\nIt matches. **Final Score**: 1"
        elif "Final Score" in text:                            # RISEBench 1-5 scales
            reply = "Looks right.\nFinal Score: 5" if "reasoning only" in text or "consistency only" in text \
                else "Final Scores: 4, 3"
        elif "RUBRIC" in text:                                 # ImgEdit: the rubric from prompts.json
            reply = "Brief reasoning: fine\nPrompt Compliance: 4\nVisual Seamlessness: 5\nPhysical Fidelity: 4"
        elif "over-editing" in text:                           # GEdit semantic consistency
            reply = '||V^=^V||{"score": [6, 9], "reasoning": "ok"}||V^=^V||'
        elif "naturalness" in text:                            # GEdit perceptual quality
            reply = "[8, 4]"
        else:                                                  # WISE
            reply = "Consistency: 2\nRealism: 1\nAesthetic Quality: 2"
        data = json.dumps({"choices": [{"message": {"content": reply}}]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):
        pass


def test_wise_generate_then_score_through_an_http_judge(tmp_path, capsys):
    data = tmp_path / "wise"
    data.mkdir()
    (data / "natural_science.json").write_text(json.dumps([
        {"Prompt": "the state of water at -10 C", "Explanation": "ice", "Category": "Natural Science",
         "Subcategory": "Physics", "prompt_id": 801},
        {"Prompt": "the colour of copper sulfate solution", "Explanation": "blue", "Category": "Natural Science",
         "Subcategory": "Chemistry", "prompt_id": 901}]))
    out = tmp_path / "out"
    assert cli(["eval", "wise", "generate", "--data", str(data), "--out", str(out), "--steps", "2"]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["801.png", "901.png"]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert cli(["eval", "wise", "score", "--data", str(data), "--images", str(out), "--judge-url",
                    f"http://127.0.0.1:{server.server_port}/v1", "--judge-model", "judge"]) == 0
    finally:
        server.shutdown()
    s = json.loads((out / "results.json").read_text())["summary"]
    assert s["categories"]["PHYSICS"] == pytest.approx(0.9) and s["overall"] is None and not s["complete"]
    assert "overall (incomplete" in (out / "results.md").read_text()
    capsys.readouterr()
    assert cli(["eval", "report", str(out), "--out", str(tmp_path / "report.md")]) == 0
    line = (tmp_path / "report.md").read_text().splitlines()[2]
    assert "| WISE | overall | - | False | off |" in line and "judge at http://127.0.0.1" in line
    assert cli(["eval", "report", str(tmp_path)]) == 2
    assert "holds no results.json" in capsys.readouterr().err


def test_bad_benchmark_inputs_are_refused(tmp_path, capsys):
    assert cli(["eval", "oneig"]) == 2
    assert "available: nano, geneval" in capsys.readouterr().err
    assert cli(["eval", "cvtg", "generate", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "has none of CVTG/<n>.json" in capsys.readouterr().err
    assert cli(["eval", "geneval", "score", "--images", str(tmp_path / "none"), "--detector", "x", "--clip", "y"]) == 2
    assert "is not a folder" in capsys.readouterr().err
    with pytest.raises(InvalidInputError, match="4 images per prompt"):
        dpg.items(tmp_path, tmp_path, images_per_prompt=1)


def test_dpg_generate_tiles_four_images(tmp_path, capsys):
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "partiprompts7.txt").write_text("a red circle above a blue square")
    out = tmp_path / "out"
    assert cli(["eval", "dpg", "generate", "--prompts", str(prompts), "--out", str(out), "--steps", "2"]) == 0
    grid = Image.open(out / "partiprompts7.png")
    assert grid.size == (128, 128)                     # 2 x 2 nano images of 64 px
    log = json.loads((out / "thinkgen_generation.jsonl").read_text())
    assert log["seeds"] == [0, 1, 2, 3]


@pytest.fixture
def judge_url():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Judge.seen = []
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()


def _sources(root, n=2):
    root.mkdir(parents=True)
    for i in range(n):
        _img(64, 64, (200, 30 * i, 30)).save(root / f"src{i}.png")


def test_imgedit_parse_and_type_means():
    from thinkgen.evals import imgedit

    assert imgedit.parse_reply("Brief reasoning: ok: fine\nPrompt Compliance: 4\nQuality: 5 \nX: 4/5") == [4, 5]
    recs = [{"edit_type": "add", "score": 4.33}, {"edit_type": "add", "score": 3.0}, {"edit_type": "remove", "score": 5.0}]
    s = imgedit.summarise(recs, [], [])
    assert s["types"] == {"add": 3.67, "remove": 5.0} and s["overall"] == pytest.approx(4.335)


def test_imgedit_generate_then_score_through_an_http_judge(tmp_path, judge_url, capsys):
    _sources(tmp_path / "Benchmark" / "animal")
    data = tmp_path / "basic_edit.json"
    data.write_text(json.dumps({"1": {"id": "animal/src0.png", "prompt": "make the circle green", "edit_type": "adjust"},
                                "2": {"id": "animal/src1.png", "prompt": "add a blue square", "edit_type": "add"}}))
    rubric = tmp_path / "prompts.json"
    rubric.write_text(json.dumps({"adjust": "RUBRIC adjust: <edit_prompt>", "add": "RUBRIC add: <edit_prompt>"}))
    out = tmp_path / "out"
    common = ["--data", str(data), "--source-root", str(tmp_path / "Benchmark")]
    assert cli(["eval", "imgedit", "generate", *common, "--out", str(out), "--steps", "2"]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["1.png", "2.png"]
    assert cli(["eval", "imgedit", "score", *common, "--images", str(out), "--judge-prompts", str(rubric),
                "--judge-url", judge_url, "--judge-model", "j"]) == 0
    s = json.loads((out / "results.json").read_text())["summary"]
    assert s["types"] == {"add": 4.33, "adjust": 4.33} and s["complete"] and _Judge.seen == [2, 2]
    with pytest.raises(InvalidInputError, match="missing; check --source-root"):
        from thinkgen.evals import imgedit
        imgedit.items(out, data, tmp_path)


@pytest.mark.parametrize("reply, want", [
    ('||V^=^V||{"score": [6, 9]}||V^=^V||', [6.0, 9.0]),
    ('Sure. {"score": [7, 3], "reasoning": "a {b}"} Hope that helps.', [7.0, 3.0]),
    ('{"score": [7, 3], "reasoning": "fine"}', [7.0, 3.0]),
    ("scores: [5, 10]", [5.0, 10.0]),
    ("8", [8.0]),
    ("no idea", None),
])
def test_gedit_reply_parsing(reply, want):
    from thinkgen.evals import gedit

    assert gedit.parse_scores(reply) == want


def test_gedit_generate_then_score_through_an_http_judge(tmp_path, judge_url, capsys):
    _sources(tmp_path / "gedit" / "images")
    manifest = tmp_path / "gedit" / "manifest.jsonl"
    rows = [{"key": "k0", "task_type": "color_alter", "instruction": "make it green", "instruction_language": "en",
             "source_image": "images/src0.png", "Intersection_exist": True},
            {"key": "k0", "task_type": "color_alter", "instruction": "把它变成绿色", "instruction_language": "cn",
             "source_image": "images/src0.png", "Intersection_exist": True},
            {"key": "k1", "task_type": "subject-add", "instruction": "add a star", "instruction_language": "en",
             "source_image": "images/src1.png", "Intersection_exist": False}]
    manifest.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    assert cli(["eval", "gedit", "generate", "--data", str(manifest), "--out", str(out), "--steps", "2"]) == 0
    assert (out / "fullset" / "color_alter" / "cn" / "k0.png").is_file()
    assert cli(["eval", "gedit", "score", "--data", str(manifest), "--images", str(out), "--judge-url", judge_url,
                "--judge-model", "j"]) == 0
    s = json.loads((out / "results.json").read_text())["summary"]
    en = s["languages"]["en"]
    assert en["all"]["macro"] == pytest.approx({"sc": 6.0, "pq": 4.0, "o": 24 ** 0.5})
    assert en["intersection"]["images"] == 1 and s["languages"]["cn"]["all"]["images"] == 1
    assert sorted(_Judge.seen) == [1, 1, 1, 2, 2, 2]                  # SC sees source + edit, PQ the edit only


@pytest.mark.parametrize("cat, c, r, p, free, score, done", [
    ("temporal_reasoning", 5, 5, 5, False, 5.0, True),
    ("causal_reasoning", 4, 5, 5, False, 0.3 * 4 + 2.5 + 1.0, False),
    ("spatial_reasoning", None, 5, 4, True, 0.8 + 4.0, False),
    ("spatial_reasoning", None, 5, 5, True, 5.0, True),
    ("temporal_reasoning", 5, 1, 5, False, max(1, 0.5 * (1.5 + 0.5 + 1.0)), False),    # reasoning 1 halves the score
    ("logical_reasoning", 5, 5, None, False, 5.0, True),
    ("logical_reasoning", 1, 5, None, False, 0.3 + 3.5, False),
])
def test_risebench_sample_score_and_completion(cat, c, r, p, free, score, done):
    from thinkgen.evals import risebench as rb

    assert rb.sample_score(cat, c, r, p, free) == pytest.approx(score)
    assert rb.complete(cat, c, r, p, free) is done
    if free and done:
        assert rb.complete(cat, c, r, p, free, fixed=False) is False           # before the official fix


def test_risebench_extract_and_consistency_free_switch():
    from thinkgen.evals import risebench as rb

    assert rb.extract("blah **Final Score**: 4") == 4 and rb.extract("Final Scores: 3, 5") == 3
    assert rb.extract("Final Score:\n 2") == 2 and rb.extract("no score") is None
    assert rb.consistency_free({}) is False and rb.consistency_free({"consistency_free": True})
    assert rb.consistency_free({"consistency_free": None}) is False
    assert rb.consistency_free({"consistency_free": None}, nan_truthy=True) is True


def test_risebench_generate_then_score_through_an_http_judge(tmp_path, judge_url, capsys):
    from thinkgen.evals import risebench as rb

    _sources(tmp_path / "data" / "images")
    _img(64, 64, (0, 200, 0)).save(tmp_path / "data" / "images" / "ref.png")
    data = tmp_path / "data" / "data_total.json"
    data.write_text(json.dumps([
        {"index": "temporal_reasoning_1", "category": "temporal_reasoning", "instruction": "show it after a day",
         "image": "images/src0.png", "reference": "the circle is green"},
        {"index": "spatial_reasoning_2", "category": "spatial_reasoning", "instruction": "rotate it",
         "image": "images/src1.png", "reference_img": "images/ref.png", "consistency_free": True},
        {"index": "logical_reasoning_3", "category": "logical_reasoning", "instruction": "solve the maze",
         "image": "images/src0.png", "reference_txt": "the left path"}]))
    out = tmp_path / "out"
    assert cli(["eval", "risebench", "generate", "--data", str(data), "--out", str(out), "--steps", "2"]) == 0
    assert (out / "images" / "logical_reasoning" / "logical_reasoning_3.png").is_file()
    assert cli(["eval", "risebench", "score", "--data", str(data), "--images", str(out), "--judge-url", judge_url,
                "--judge-model", "j"]) == 0
    res = json.loads((out / "results.json").read_text())
    recs = {r["index"]: r for r in res["records"]}
    # consistency 5, reasoning 5, plausibility "Final Scores: 4, 3" -> 4: not complete
    assert recs["temporal_reasoning_1"]["score"] == pytest.approx(0.3 * 5 + 0.5 * 5 + 0.2 * 4)
    assert recs["spatial_reasoning_2"]["consistency"] is None and not recs["spatial_reasoning_2"]["complete"]
    assert recs["logical_reasoning_3"]["complete"] and recs["logical_reasoning_3"]["plausibility"] is None
    assert res["summary"]["accuracy"] == pytest.approx(1 / 3)
    # consistency, reasoning, plausibility: 2 + 2 + 1 images; reference image: 3 + 1; logical: 2 + 2
    assert sorted(_Judge.seen) == [1, 1, 2, 2, 2, 2, 3]
    with pytest.raises(InvalidInputError, match="not a RISEBench item"):
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps([{"index": "x", "category": "funny", "instruction": "i", "image": "a.png"}]))
        rb.load_items(bad)


def test_parallel_judging_keeps_order_and_refuses_bad_worker_counts():
    import time as _time

    from thinkgen.evals.common import parallel_map

    def slow(x):
        _time.sleep(0.02 * (5 - x))       # later items finish first
        return x * x

    assert parallel_map(slow, list(range(5)), 5, "t", progress=False) == [0, 1, 4, 9, 16]
    with pytest.raises(InvalidInputError, match="judge workers"):
        parallel_map(slow, [1], 0, "t", progress=False)
