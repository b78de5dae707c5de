"""thinkgen.rl.rewards: registry, combiner, async wrapper and every built-in reward (offline)."""
import http.server
import json
import threading

import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from thinkgen.errors import ConfigError, ThinkgenError
from thinkgen.rl import rewards as R


def _img(colour="white", size=(32, 32)):
    return Image.new("RGB", size, colour)


# ----------------------------------------------------------------------------- registry, combiner, async


def test_registry_has_builtins_and_rejects_unknown():
    for name in ("format", "ocr_ned", "ocr_word_accuracy", "geneval_rule", "clip_similarity", "preference",
                 "vlm_judge"):
        assert name in R.REWARDS
    with pytest.raises(ConfigError, match="unknown reward"):
        R.build_reward("nope")
    with pytest.raises(ValueError, match="already registered"):
        R.register_reward("format")(lambda: None)
    assert isinstance(R.build_reward("format"), R.FormatReward)


def _const(values):
    calls = []

    def fn(images, prompts, meta):
        calls.append(len(images))
        return torch.tensor(values, dtype=torch.float32)

    fn.calls = calls
    return fn


def _per_sample(key):
    """A reward reading meta[key] (NaN when missing); records the sub-batch sizes it was called with."""
    calls = []

    def fn(images, prompts, meta):
        calls.append(len(images))
        return torch.tensor([float(m.get(key, float("nan"))) for m in meta], dtype=torch.float32)

    fn.calls = calls
    return fn


def test_combined_reward_per_scenario_weights():
    a, b = _per_sample("a"), _per_sample("b")
    comb = R.CombinedReward({"a": 1.0, "b": 0.5}, per_scenario={"text": {"a": 2.0}},
                            rewards={"a": a, "b": b})
    meta = [{"a": 1.0, "b": 10.0}, {"scenario": "text", "a": 1.0}, {"scenario": "unknown", "a": 1.0, "b": 10.0}]
    total, parts = comb.compute([_img(), None, _img()], ["p"] * 3, meta)
    # sample 1 uses the "text" weights: b is not computed for it (its image is None), so nothing NaN leaks in
    assert total.tolist() == [6.0, 2.0, 6.0]
    assert set(parts) == {"a", "b"} and torch.isnan(parts["b"][1]) and parts["b"][0] == 10.0
    assert a.calls == [3] and b.calls == [2]   # each reward computed once, on the samples that weight it
    nan_total = R.CombinedReward({"b": 1.0}, rewards={"b": b})([_img()] * 3, ["p"] * 3, [{}, {"b": 1.0}, {}])
    assert torch.isnan(nan_total[0]) and nan_total[1] == 1.0
    with pytest.raises(TypeError, match="None for a text-output sample"):
        comb.compute(["not an image"], ["p"], [{}])


def test_combined_reward_checks_shapes():
    comb = R.CombinedReward({"a": 1.0}, rewards={"a": _const([1.0])})
    with pytest.raises(ValueError, match="shape"):
        comb([_img()] * 2, ["p"] * 2, [{}] * 2)


def test_async_reward_returns_future():
    with R.AsyncReward(_const([0.5, 0.25])) as ar:
        fut = ar([_img()] * 2, ["a", "b"], [{}, {}])
        assert fut.result(timeout=10).tolist() == [0.5, 0.25]


# ----------------------------------------------------------------------------- format


def test_format_reward():
    fmt = R.FormatReward()
    texts = [
        "I should draw a cat.</think>A red cat on a sofa.<|im_end|>",
        "no closing tag at all",
        "thinking...</think>   <|im_end|>",
        "a</think>b</think>c",
    ]
    meta = [{"thought": t} for t in texts]
    assert fmt([_img()] * 4, ["ignored"] * 4, meta).tolist() == [1.0, 0.0, 0.0, 0.0]
    # without meta["thought"] the prompt text is checked
    assert fmt([_img()], ["x</think>draw"], [{}]).tolist() == [1.0]


# ----------------------------------------------------------------------------- OCR


def test_levenshtein():
    assert R.levenshtein("kitten", "sitting") == 3
    assert R.levenshtein("", "abc") == 3 and R.levenshtein("abc", "abc") == 0
    assert R.levenshtein("flaw", "lawn") == 2


def test_ocr_scores_flow_grpo_rule():
    assert R.ocr_target_text('a sign that says "Hello World" in red', {}) == "Hello World"
    assert R.ocr_target_text("a sign", {"text": "OPEN"}) == "OPEN"
    assert R.ocr_target_text("no quotes", {}) is None
    assert R.ocr_ned_score("xx HELLO world yy", "Hello World") == 1.0  # substring after lowercase/no spaces
    assert R.ocr_ned_score("hellp", "hello") == pytest.approx(0.8)
    assert R.ocr_ned_score("", "hello") == 0.0  # distance capped at len(target)
    assert R.ocr_word_accuracy_score("Hello, there", "hello world") == 0.5


def test_ocr_reward_with_fake_engine():
    reads = {"white": ["HELLO", "W0RLD"], "black": []}
    eng = lambda im: reads["white" if im.getpixel((0, 0)) == (255, 255, 255) else "black"]  # noqa: E731
    ned = R.OCRReward("ned", engine=eng)
    wacc = R.OCRReward("word_accuracy", engine=eng)
    prompts = ['"hello world"', '"hello world"', "nothing quoted"]
    imgs = [_img("white"), _img("black"), _img("white")]
    out = ned(imgs, prompts, [{}] * 3)
    assert out[0].item() == pytest.approx(1 - 1 / 10) and out[1].item() == 0.0 and torch.isnan(out[2])
    assert wacc(imgs, prompts, [{}] * 3)[:2].tolist() == [0.5, 0.0]


def test_ocr_missing_dependency_message(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "rapidocr", None)
    monkeypatch.setattr(R, "_OCR_ENGINE", None)
    with pytest.raises(R.MissingDependencyError, match=r"pip install 'thinkgen\[ocr\]'") as ei:
        R.build_reward("ocr_ned")
    assert isinstance(ei.value, ImportError) and isinstance(ei.value, ThinkgenError)


def test_ocr_reward_reads_rendered_word():
    pytest.importorskip("rapidocr")
    pytest.importorskip("onnxruntime")
    img = Image.new("RGB", (320, 96), "white")
    ImageDraw.Draw(img).text((16, 20), "THINKGEN", fill="black", font=ImageFont.load_default(size=44))
    ned = R.build_reward("ocr_ned")
    out = ned([img, Image.new("RGB", (320, 96), "white")], ['a poster saying "ThinkGen"'] * 2, [{}, {}])
    assert out[0].item() == 1.0
    assert out[1].item() == 0.0


# ----------------------------------------------------------------------------- GenEval rule


def _det(label, x, y, w=10, h=10, score=0.99, colour=None):
    return R.Detection(label, (x, y, x + w, y + h), score, colour)


def test_relative_position():
    a, b = (0, 40, 10, 50), (40, 40, 50, 50)
    assert R.relative_position(a, b) == {"left of"}
    assert R.relative_position(b, a) == {"right of"}
    assert R.relative_position((40, 0, 50, 10), b) == {"above"}
    assert R.relative_position((41, 40, 51, 50), b) == set()  # overlapping: shrunk offset ~0


def _geneval(dets):
    return R.GenEvalRuleReward(lambda im: dets)


def test_geneval_counting_partial_credit_and_strict():
    meta = [{"tag": "counting", "include": [{"class": "cat", "count": 2}]}]
    rw = _geneval([_det("cat", 0, 0), _det("cat", 20, 0), _det("cat", 40, 0, score=0.5)])
    out = rw([_img()], ["two cats"], meta)
    assert out.item() == 1.0  # the 0.5-score cat is below the 0.9 counting threshold
    assert meta[0]["geneval"]["strict_correct"] and meta[0]["geneval"]["correct"]
    meta = [{"tag": "single_object", "include": [{"class": "cat", "count": 1}]}]
    out = _geneval([_det("cat", 0, 0), _det("cat", 20, 0), _det("cat", 40, 0, score=0.5)])([_img()], ["a cat"], meta)
    assert out.item() == -1.0  # 3 found for 1 requested: 1 - 2/1, negative like the reference
    assert not meta[0]["geneval"]["strict_correct"] and meta[0]["geneval"]["correct"]  # lenient >= rule


def test_geneval_colour_and_position_quirks():
    cat_red = _det("cat", 0, 40, colour="red")
    dog = _det("dog", 40, 40, colour="blue")
    include = [{"class": "dog", "count": 1}, {"class": "cat", "count": 1, "color": "red", "position": ["left of", 0]}]
    meta = [{"tag": "position", "include": include}]
    assert _geneval([cat_red, dog])([_img()], ["p"], meta).item() == 1.0
    # wrong side: parts = [1 (dog), 1 (cat count), 1 (colour), 0 and 1 (failing position)] -> 4/5
    cat_right = _det("cat", 80, 40, colour="red")
    m = [{"tag": "position", "include": include}]
    assert _geneval([cat_right, dog])([_img()], ["p"], m).item() == pytest.approx(4 / 5)
    assert not m[0]["geneval"]["strict_correct"]
    # wrong colour: colour part 0 and the position part is skipped -> [1, 1, 0] -> 2/3
    cat_blue = _det("cat", 0, 40, colour="blue")
    assert _geneval([cat_blue, dog])([_img()], ["p"], [{"include": include}]).item() == pytest.approx(2 / 3)
    # count wrong: a single 0 for colour+position -> [1, 0 (0 cats), 0] -> 1/3
    assert _geneval([dog])([_img()], ["p"], [{"include": include}]).item() == pytest.approx(1 / 3)


def test_geneval_exclude_and_nan():
    m = [{"include": [{"class": "cat", "count": 1}], "exclude": [{"class": "dog", "count": 1}]}]
    out = _geneval([_det("cat", 0, 0), _det("dog", 30, 0)])([_img()], ["p"], m)
    assert out.item() == 1.0 and m[0]["geneval"]["strict_correct"] and not m[0]["geneval"]["correct"]
    assert torch.isnan(_geneval([])([_img()], ["p"], [{}]))[0]

    def broken(im):
        raise RuntimeError("boom")

    m = [{"include": [{"class": "cat", "count": 1}]}]
    assert torch.isnan(R.GenEvalRuleReward(broken)([_img()], ["p"], m))[0]
    assert "boom" in m[0]["geneval"]["reasons"][0]


# ----------------------------------------------------------------------------- CLIP / preference (tiny random model)


def test_clip_similarity_offline(tiny_clip_dir):
    rw = R.build_reward("clip_similarity", model_dir=str(tiny_clip_dir))
    imgs = [_img("red", (48, 40)), _img("blue")]
    out = rw(imgs, ["a red cat", "a blue dog on a sofa"], [{}, {}])
    assert out.shape == (2,) and out.dtype == torch.float32
    assert (out.abs() <= 1 + 1e-5).all()
    # cosine of the same pair is deterministic and consistent with the embeddings
    img_e = rw.model.image_embeds(imgs)
    txt_e = rw.model.text_embeds(["a red cat", "a blue dog on a sofa"])
    assert torch.allclose(out, (img_e * txt_e).sum(-1), atol=1e-6)
    # the fallback preprocessing (no transformers image processor) gives the same pixels shape
    fb = R._FallbackImageProcessor(tiny_clip_dir)
    assert fb(imgs)["pixel_values"].shape == (2, 3, 32, 32)


def test_preference_with_linear_head(tiny_clip_dir, tmp_path):
    from safetensors.torch import save_file

    head = tmp_path / "head.safetensors"
    save_file({"proj.weight": torch.ones(1, 8), "proj.bias": torch.tensor([0.5])}, str(head))
    rw = R.build_reward("preference", model_dir=tiny_clip_dir, head_path=head)
    imgs = [_img("red"), _img("green")]
    out = rw(imgs, ["x", "y"], [{}, {}])
    assert torch.allclose(out, rw.model.image_embeds(imgs).sum(-1) + 0.5, atol=1e-6)
    no_head = R.build_reward("preference", model_dir=tiny_clip_dir)
    assert no_head(imgs, ["x", "y"], [{}, {}]).shape == (2,)


def test_model_dir_errors(tmp_path):
    for name in ("clip_similarity", "preference"):
        with pytest.raises(ConfigError, match="model_dir"):
            R.build_reward(name)
        with pytest.raises(ConfigError, match="model_dir"):
            R.build_reward(name, model_dir=tmp_path / "missing")


# ----------------------------------------------------------------------------- VLM judge


def test_parse_judge_score():
    assert R.parse_judge_score("Looks good.\nScore: 7/10") == 0.7
    assert R.parse_judge_score("score = 8") == 0.8
    assert R.parse_judge_score("Score: 2/10 at first... Final Score: 4/5") == 0.8  # the last one wins
    assert R.parse_judge_score("**Score:** 9/10") == 0.9
    assert R.parse_judge_score("I like it") is None
    assert R.parse_judge_score("Score: 12/10") is None


def test_judge_retry_cache_and_failures():
    replies = iter(["hmm, nice", "Score: 6/10", "Score: 9/10"])
    calls = []

    def backend(image, text):
        calls.append(text)
        return next(replies)

    judge = R.VLMJudgeReward(backend, max_workers=1)
    img = _img("red")
    out = judge([img], ["a red square"], [{}])
    assert out.tolist() == [pytest.approx(0.6)] and len(calls) == 2 and "a red square" in calls[0]
    out = judge([img.copy()], ["a red square"], [{}])  # same pixels + prompt -> cached, no call
    assert out.tolist() == [pytest.approx(0.6)] and len(calls) == 2 and judge.last_status == ["cached"]

    judge_bad = R.VLMJudgeReward(lambda im, t: "no idea", max_parse_retries=1)
    assert judge_bad([img], ["p"], [{}]).tolist() == [0.0]
    assert judge_bad.stats["parse_failed"] == 1 and judge_bad.stats["calls"] == 2

    def boom(im, t):
        raise OSError("down")

    judge_err = R.VLMJudgeReward(boom)
    assert judge_err([img], ["p"], [{}]).tolist() == [0.0]
    assert judge_err.stats["request_failed"] == 1 and judge_err.last_status == ["request_failed"]


class _FakeOpenAI(http.server.BaseHTTPRequestHandler):
    script: list = []
    seen: list = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append((self.path, self.headers.get("Authorization"), body))
        status, content = type(self).script.pop(0)
        payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_server():
    _FakeOpenAI.script, _FakeOpenAI.seen = [], []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeOpenAI)
    th = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1", _FakeOpenAI
    srv.shutdown()
    srv.server_close()


def test_judge_over_http(fake_server, monkeypatch):
    base_url, handler = fake_server
    monkeypatch.setenv("THINKGEN_TEST_JUDGE_KEY", "sk-test")
    # HTTP 500 (retried by the backend), then an unparsable reply (re-asked), then a score
    handler.script = [(500, "oops"), (200, "The image is fine."), (200, "Reasoning...\nScore: 8/10")]
    judge = R.build_reward("vlm_judge", base_url=base_url, model="judge-1",
                           api_key_env="THINKGEN_TEST_JUDGE_KEY", backoff_s=0.0, timeout=5.0)
    img = _img("blue")
    assert judge([img], ["a blue square"], [{}]).tolist() == [pytest.approx(0.8)]
    assert len(handler.seen) == 3
    path, auth, body = handler.seen[0]
    assert path == "/v1/chat/completions" and auth == "Bearer sk-test" and body["model"] == "judge-1"
    content = body["messages"][0]["content"]
    assert content[0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert "a blue square" in content[1]["text"]
    # cached: no new request
    assert judge([img], ["a blue square"], [{}]).tolist() == [pytest.approx(0.8)]
    assert len(handler.seen) == 3
    # a 4xx is not retried and scores 0 as a request failure
    handler.script = [(400, "bad")]
    assert judge([_img("green")], ["x"], [{}]).tolist() == [0.0]
    assert judge.stats["request_failed"] == 1 and len(handler.seen) == 4


def test_judge_backend_config_errors():
    with pytest.raises(ConfigError):
        R.build_reward("vlm_judge")
    with pytest.raises(ConfigError):
        R.OpenAIChatBackend("http://127.0.0.1:1", "m", max_retries=5)
