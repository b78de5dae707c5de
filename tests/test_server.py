"""The HTTP server (thinkgen.server) and its UI (thinkgen.ui) on the shipped nano model: OpenAI-compatible responses,
exact request batching, errors that name the field, a failing job that fails alone, back-pressure."""
import base64
import io
import json
import threading

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from thinkgen.errors import InvalidInputError  # noqa: E402
from thinkgen.server import (BatchQueue, GenJob, GenSettings, ServerBusyError, create_app,  # noqa: E402
                             decode_image_string, parse_size)

PROMPT = "two red circles left of a blue square"


@pytest.fixture(scope="module")
def pipe():
    from thinkgen.pipeline import ThinkGenPipeline

    return ThinkGenPipeline.from_pretrained(None, device="cpu")


@pytest.fixture(scope="module")
def client(pipe):
    with TestClient(create_app(pipe, max_wait_s=0.05, max_request_bytes=256 * 1024, ui=False)) as c:
        yield c


def _decode(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"), dtype=np.int16)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_generation_is_openai_shaped_and_equals_a_direct_pipeline_call(client, pipe):
    r = client.post("/v1/images/generations", json={"prompt": PROMPT, "n": 2, "seed": 7, "think": "on"})
    assert r.status_code == 200, r.text
    body = r.json()
    ref = pipe(PROMPT, think="on", seed=7, num_images_per_prompt=2)
    assert [d["revised_prompt"] for d in body["data"]] == [ref.instructions[0]] * 2
    for d, img in zip(body["data"], ref.images):
        assert np.array_equal(_decode(d["b64_json"]), np.asarray(img, dtype=np.int16))
    meta = body["thinkgen"]
    assert meta["seeds"] == [7, 8] and meta["finished"] is True and meta["batch_prompts"] == 1
    assert meta["thoughts"] and "</think>" not in meta["thoughts"] and "<think>" not in meta["thoughts"]
    assert meta["settings"]["think"] == "on" and meta["settings"]["num_images_per_prompt"] == 2


def test_size_and_extension_parameters_reach_the_pipeline(client):
    r = client.post("/v1/images/generations", json={"prompt": "a red circle", "size": "32x48", "seed": 1,
                                                    "num_inference_steps": 3, "text_guidance_scale": 1.0})
    assert r.status_code == 200, r.text
    s = r.json()["thinkgen"]["settings"]
    assert (s["width"], s["height"], s["num_inference_steps"], s["text_guidance_scale"]) == (32, 48, 3, 1.0)
    assert _decode(r.json()["data"][0]["b64_json"]).shape == (48, 32, 3)


def test_concurrent_compatible_jobs_run_as_one_call_with_solo_results(pipe):
    q = BatchQueue(pipe, max_batch_images=8, max_wait_s=2.0)
    try:
        s = GenSettings(num_inference_steps=4)
        prompts = ["a red circle", "a blue square left of a green star", "three yellow triangles"]
        futures = [q.submit(GenJob(prompt=p, seed=10 + i, settings=s)) for i, p in enumerate(prompts)]
        results = [f.result(timeout=120) for f in futures]
    finally:
        q.close()
    assert q.stats["calls"] == 1 and [r.batch_prompts for r in results] == [3, 3, 3]
    for i, (p, r) in enumerate(zip(prompts, results)):
        solo = pipe(p, seed=10 + i, num_inference_steps=4)
        assert r.instruction == solo.instructions[0] and r.seeds == solo.seeds
        diff = np.abs(np.asarray(r.images[0], dtype=np.int16) - np.asarray(solo.images[0], dtype=np.int16))
        assert diff.max() <= 2, f"prompt {i}: merged result differs from the solo call by up to {diff.max()} levels"


def test_different_settings_or_image_limit_split_the_batch(pipe):
    q = BatchQueue(pipe, max_batch_images=3, max_wait_s=2.0)
    try:
        a = [q.submit(GenJob(prompt="a red circle", seed=i, settings=GenSettings(num_inference_steps=2, num_images=2)))
             for i in range(2)]                                   # 2 + 2 images > 3: two calls
        b = q.submit(GenJob(prompt="a red circle", seed=0, settings=GenSettings(num_inference_steps=3)))
        results = [f.result(timeout=120) for f in a + [b]]
    finally:
        q.close()
    assert [r.batch_prompts for r in results] == [1, 1, 1] and q.stats["calls"] == 3
    assert [len(r.images) for r in results] == [2, 2, 1]
    with pytest.raises(InvalidInputError, match="batch limit of 3"):
        BatchQueue(pipe, max_batch_images=3).submit(GenJob("x", 0, GenSettings(num_images=4)))


def test_a_failing_job_in_a_merged_call_fails_alone(pipe):
    q = BatchQueue(pipe, max_wait_s=2.0)
    try:
        s = GenSettings(num_inference_steps=2)
        good = q.submit(GenJob(prompt="a red circle", seed=0, settings=s))
        bad = q.submit(GenJob(prompt="a red\x00circle", seed=1, settings=s))   # bypasses the API's checks
        assert good.result(timeout=120).images
        with pytest.raises(InvalidInputError, match="NUL"):
            bad.result(timeout=120)
    finally:
        q.close()
    assert q.stats["solo_retries"] == 1


def test_full_queue_is_refused_and_close_fails_what_waits(pipe):
    q = BatchQueue(pipe, max_queue=1, max_wait_s=0.0)
    gate, started = threading.Event(), threading.Event()
    blocker = q.call(lambda: (started.set(), gate.wait(60)))     # occupies the worker
    assert started.wait(60)
    waiting = q.submit(GenJob("a red circle", 0, GenSettings(num_inference_steps=1)))
    with pytest.raises(ServerBusyError, match="queue is full"):
        q.submit(GenJob("a red circle", 1, GenSettings(num_inference_steps=1)))
    closer = threading.Thread(target=q.close)
    closer.start()
    with pytest.raises(Exception, match="shut down"):
        waiting.result(timeout=60)
    gate.set()
    closer.join(60)
    assert blocker.result(timeout=60)[0] is None


@pytest.mark.parametrize("body, status, words", [
    ({"prompt": "x", "n": 0}, 400, "n: Input should be greater than or equal to 1"),
    ({"prompt": "x", "size": "64x"}, 400, "size must be 'auto' or 'WIDTHxHEIGHT'"),
    ({"prompt": "x", "response_format": "url"}, 400, "use 'b64_json'"),
    ({"prompt": "x", "quality": "hd"}, 400, "quality: not a parameter of this endpoint"),
    ({"prompt": "   "}, 400, "prompt[0] is empty"),
    ({"prompt": "x", "model": "dall-e-3"}, 400, "this server serves 'nano'"),
    ({"n": 1}, 400, "prompt: required"),
    ([1, 2], 400, "must be a JSON object"),
    ({"prompt": "x", "think": "maybe"}, 400, "think"),
    ({"prompt": "x", "size": "1x1"}, 400, "height must be in"),           # the pipeline's own check, as a 400
    ({"prompt": "x", "n": 9}, 400, "batch limit of 8"),
])
def test_bad_generation_requests_get_400_naming_the_field(client, body, status, words):
    r = client.post("/v1/images/generations", json=body)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]["message"]
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_bad_bodies_and_oversized_requests(client):
    r = client.post("/v1/images/generations", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = client.post("/v1/images/edits", json={"prompt": "x", "image": "A" * (300 * 1024)})
    assert r.status_code == 413 and "--max-request-mb" in r.json()["error"]["message"]


def test_edit_multipart_and_json_give_the_direct_pipeline_result(client, pipe):
    src = pipe("a red circle", seed=3).images[0]
    png = _png(src)
    ref = pipe("make the circle green", images=[src], seed=5)
    r1 = client.post("/v1/images/edits", files={"image": ("in.png", png, "image/png")},
                     data={"prompt": "make the circle green", "seed": "5", "n": "1"})
    r2 = client.post("/v1/images/edits", json={"prompt": "make the circle green", "seed": 5,
                                               "image": "data:image/png;base64," + base64.b64encode(png).decode()})
    for r in (r1, r2):
        assert r.status_code == 200, r.text
        assert np.array_equal(_decode(r.json()["data"][0]["b64_json"]), np.asarray(ref.images[0], dtype=np.int16))
        assert r.json()["data"][0]["revised_prompt"] == ref.instructions[0]


@pytest.mark.parametrize("kwargs, words", [
    ({"json": {"prompt": "make it green"}}, "an edit needs at least one image"),
    ({"json": {"prompt": "x", "image": "https://example.com/a.png"}}, "fetches nothing"),
    ({"json": {"prompt": "x", "image": "not base64!"}}, "not valid base64"),
    ({"json": {"prompt": "x", "image": base64.b64encode(b"GIF89a-broken").decode()}}, "could not be read"),
    ({"files": {"image": ("a.png", b"", "image/png")}, "data": {"prompt": "x"}}, "empty"),
    ({"files": {"image": ("a.png", b"x", "image/png")}, "data": {"prompt": "x", "cfg_range": "a b"}},
     "cfg_range must be two numbers"),
])
def test_bad_edit_requests_get_400(client, kwargs, words):
    r = client.post("/v1/images/edits", **kwargs)
    assert r.status_code == 400, r.text
    assert words in r.json()["error"]["message"]


def test_chat_completion_splits_reasoning_from_the_answer(client, pipe):
    img = pipe("a red circle", seed=3).images[0]
    url = "data:image/png;base64," + base64.b64encode(_png(img)).decode()
    r = client.post("/v1/chat/completions", json={"model": "nano", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "what colour is the circle?"}]}]})
    assert r.status_code == 200, r.text
    msg = r.json()["choices"][0]["message"]
    reply = pipe.chat("what colour is the circle?", [img])
    assert msg["role"] == "assistant" and msg["content"] == reply.rpartition("</think>")[2].strip()
    assert msg["reasoning_content"] and "</think>" not in msg["reasoning_content"]
    for body, words in [
        ({"messages": [{"role": "user", "content": "hi"}], "temperature": 0.7}, "temperature: not a parameter"),
        ({"messages": []}, "messages is empty"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "role must be"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/a.png"}}]}]},
         "fetches nothing"),
    ]:
        r = client.post("/v1/chat/completions", json=body)
        assert r.status_code == 400 and words in r.json()["error"]["message"], r.text


def test_models_and_health(client):
    assert client.get("/v1/models").json()["data"][0]["id"] == "nano"
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["device"] == "cpu" and h["stats"]["calls"] >= 1


def test_parsers():
    assert parse_size("auto") == (None, None) and parse_size("1024x768") == (768, 1024)
    with pytest.raises(InvalidInputError):
        parse_size("1024")
    assert decode_image_string("data:image/png;base64," + base64.b64encode(b"abc").decode(), "x", 100) == b"abc"
    with pytest.raises(InvalidInputError, match="larger than"):
        decode_image_string(base64.b64encode(b"a" * 300).decode(), "x", 100)
    with pytest.raises(InvalidInputError, match="data URL"):
        decode_image_string("data:text/plain;base64,YWJj", "x", 100)


def test_ui_mounts_and_its_handlers_use_the_queue(pipe):
    gr = pytest.importorskip("gradio")
    from thinkgen.server import ThinkGenService
    from thinkgen.ui import build_ui, make_handlers

    app = create_app(pipe, ui=True)
    with TestClient(app) as c:
        assert c.get("/ui/").status_code == 200
    q = BatchQueue(pipe)
    try:
        service = ThinkGenService(pipe, q, model_name="nano")
        assert isinstance(build_ui(service), gr.Blocks)
        h = make_handlers(service)
        images, thoughts, instruction = h["generate"](PROMPT, "on", 7, 4, 1, 64, 64)
        ref = pipe(PROMPT, think="on", seed=7, num_inference_steps=4)
        assert instruction == ref.instructions[0] and thoughts and len(images) == 1
        assert np.array_equal(np.asarray(images[0]), np.asarray(ref.images[0]))
        edited, _, _ = h["edit"](ref.images[0], "make the circle green", "off", 1, 4)
        assert edited.size == ref.images[0].size
        answer, _ = h["understand"](ref.images[0], "what colour is the circle?")
        assert answer
        with pytest.raises(gr.Error, match="empty"):
            h["generate"]("  ", "off", 0, 4, 1, 64, 64)
        with pytest.raises(gr.Error, match="upload an image"):
            h["edit"](None, "make it green", "off", 0, 4)
    finally:
        q.close()


def test_cli_serve_refuses_bad_ports_before_loading(capsys):
    from thinkgen.cli import main

    assert main(["serve", "--port", "70000"]) == 2
    assert "--port must be in [1, 65535]" in capsys.readouterr().err


def test_api_key_guards_the_api_but_not_health(pipe, monkeypatch, capsys):
    with TestClient(create_app(pipe, api_key="s3cret-key", ui=False)) as c:
        assert c.get("/v1/models").status_code == 401
        r = c.get("/v1/models", headers={"authorization": "Bearer wrong-key!"})
        assert r.status_code == 401 and "Authorization: Bearer" in r.json()["error"]["message"]
        assert c.get("/v1/models", headers={"authorization": "Bearer s3cret-key"}).status_code == 200
        assert c.get("/health").status_code == 200
    pytest.importorskip("gradio")
    with TestClient(create_app(pipe, api_key="s3cret-key")) as c:                  # the UI logs in with the key
        assert c.post("/ui/login", data={"username": "thinkgen", "password": "nope"}).status_code == 400
        assert c.post("/ui/login", data={"username": "thinkgen", "password": "s3cret-key"}).json()["success"]
    with pytest.raises(InvalidInputError, match="at least 8 characters"):
        create_app(pipe, api_key="short", ui=False)
    from thinkgen.cli import main

    monkeypatch.setenv("THINKGEN_TEST_KEY", "abc")
    assert main(["serve", "--api-key-env", "THINKGEN_TEST_KEY"]) == 2
    assert "THINKGEN_TEST_KEY" in capsys.readouterr().err


def test_close_while_waiting_to_merge_fails_the_job_and_stops_the_worker(pipe):
    q = BatchQueue(pipe, max_wait_s=5.0)
    f = q.submit(GenJob("a red circle", 0, GenSettings(num_inference_steps=1)))
    q.close()
    with pytest.raises(Exception, match="shut down"):
        f.result(timeout=30)
    assert not q._thread.is_alive()


def _events(text: str) -> list:
    lines = [ln[len("data: "):] for ln in text.split("\n") if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(x) for x in lines[:-1]]


def test_chat_streams_reasoning_then_answer_as_server_sent_events(client, pipe):
    img = pipe("a red circle", seed=3).images[0]
    url = "data:image/png;base64," + base64.b64encode(_png(img)).decode()
    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                      {"type": "text", "text": "what colour is the circle?"}]}]}
    whole = client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]
    r = client.post("/v1/chat/completions", json={**body, "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = _events(r.text)
    deltas = [e["choices"][0]["delta"] for e in events]
    assert deltas[0]["role"] == "assistant" and events[-1]["choices"][0]["finish_reason"] == "stop"
    reasoning = "".join(d.get("reasoning_content", "") for d in deltas)
    content = "".join(d.get("content", "") for d in deltas)
    assert reasoning.strip() == whole["reasoning_content"] and content.strip() == whole["content"]
    kinds = [k for d in deltas[1:] for k in d if k in ("reasoning_content", "content")]
    assert kinds.index("content") > kinds.index("reasoning_content") and len(kinds) > 2    # streamed in pieces
    bad = client.post("/v1/chat/completions", json={"messages": [], "stream": True})      # refused before streaming
    assert bad.status_code == 400 and "messages is empty" in bad.json()["error"]["message"]


def test_think_splitter_holds_back_cut_tags():
    from thinkgen.server import ThinkSplitter

    sp = ThinkSplitter()
    out = []
    for piece in ["<th", "ink>\nso a red", " circle.</th", "ink>", "\n\nred", " circle"]:
        out += sp.feed(piece)
    out += sp.flush()
    assert "".join(p for k, p in out if k == "reasoning_content") == "so a red circle."
    assert "".join(p for k, p in out if k == "content") == "red circle" and sp.state == "answer"
    sp = ThinkSplitter()
    assert sp.feed("plain answer") == [("content", "plain answer")]
    sp = ThinkSplitter()
    assert sp.feed("<think>\nstill going") == [("reasoning_content", "still going")] and sp.state == "think"


def test_chat_stream_reports_a_failed_call(pipe):
    from concurrent.futures import Future

    from transformers import TextIteratorStreamer

    from thinkgen.server import ThinkGenService

    q = BatchQueue(pipe)
    try:
        service = ThinkGenService(pipe, q, model_name="nano")
        streamer = TextIteratorStreamer(pipe.mllm.tokenizer, skip_prompt=True, timeout=0.05)
        f = Future()
        f.set_exception(InvalidInputError("message is empty; ask a question"))   # failed before generating
        events = _events("".join(service.chat_stream(streamer, f)))
    finally:
        q.close()
    assert events[-1]["error"]["message"] == "message is empty; ask a question"
