"""Serving: an OpenAI-compatible HTTP API over one :class:`ThinkGenPipeline`, with request batching and a Gradio UI.

Data flow of one request::

    HTTP JSON / multipart  ->  parse + validate (400 naming the field)  ->  GenJob
    GenJob  ->  BatchQueue: jobs with equal settings that arrive within ``max_wait_s`` of the oldest one are merged
               (up to ``max_batch_images`` images)  ->  ONE pipeline call, one seed per prompt
    pipeline output  ->  split back per job  ->  base64 PNGs + what ThinkGen thought and told the painter

Batching is exact, not approximate: the pipeline seeds each prompt's noise and think sampling from that prompt's own
seed, so a prompt's images do not depend on the rest of its batch (``tests/test_server.py`` checks merged results
against solo calls). Edits with reference images run one job per call (their output size follows the reference,
which the pipeline decides per call). Only the queue's worker thread touches the model.

Endpoints (``create_app``): ``POST /v1/images/generations``, ``POST /v1/images/edits`` (multipart as the OpenAI
client sends it, or JSON with base64 / data-URL images), ``POST /v1/chat/completions`` (image understanding, data-URL
images, the thoughts in ``reasoning_content``), ``GET /v1/models``, ``GET /health``, and the Gradio UI at ``/ui``. Chat streams
server-sent events with ``"stream": true``.
Needs the ``serve`` extra: ``pip install 'thinkgen[serve]'``.
"""
import base64
import binascii
import collections
import dataclasses
import io
import json
import os
import random
import re
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

from PIL import Image

from .errors import GenerationError, InvalidInputError, ThinkgenError
from .pipeline import THINK_MODES, _as_prompts

DEFAULT_MAX_REQUEST_BYTES = 32 * 1024 * 1024


class ServerBusyError(ThinkgenError):
    """The request queue is full (HTTP 503): retry later or raise ``max_queue``."""


def require_serve_extra(ui: bool = False) -> None:
    """Fail with the install command when the serving libraries are missing."""
    missing = []
    for mod in ("fastapi", "uvicorn", "python_multipart") + (("gradio",) if ui else ()):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod.replace("_", "-"))
    if missing:
        raise ThinkgenError(
            f"serving needs {', '.join(missing)}: pip install 'thinkgen[serve]'"
            + ("" if not ui or missing != ["gradio"] else " (or run without the UI: --no-ui)")
        )


# ----------------------------------------------------------------------------------------------------- jobs
@dataclass(frozen=True)
class GenSettings:
    """Everything a batch shares: two jobs merge only when their settings are equal (None = the model's default)."""

    think: str = "off"
    height: int | None = None
    width: int | None = None
    num_inference_steps: int | None = None
    text_guidance_scale: float | None = None
    image_guidance_scale: float | None = None
    cfg_range: tuple[float, float] | None = None
    negative_prompt: str | None = None
    num_images: int = 1
    max_think_tokens: int | None = None
    max_answer_tokens: int | None = None
    think_temperature: float | None = None
    think_top_p: float | None = None
    think_do_sample: bool | None = None

    def pipeline_kwargs(self) -> dict[str, Any]:
        kw = dataclasses.asdict(self)
        kw["num_images_per_prompt"] = kw.pop("num_images")
        return kw


@dataclass
class GenJob:
    """One prompt (and its reference images, for an edit) with its seed; ``future`` gets a :class:`JobResult`."""

    prompt: str
    seed: int
    settings: GenSettings
    images: list[Image.Image] = field(default_factory=list)
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)

    @property
    def mergeable(self) -> bool:
        return not self.images


@dataclass
class JobResult:
    images: list[Image.Image]        # num_images images
    thought: str                     # "" with think off
    instruction: str                 # what the painter was told
    finished: bool                   # False when think ran out of budget
    seeds: list[int]                 # noise seed per image
    settings: dict[str, Any]         # every resolved setting of the call
    timings: dict[str, float]        # seconds per stage of the (batched) call
    batch_prompts: int               # prompts in the pipeline call that produced it


@dataclass
class _Call:
    """Exclusive work on the model (chat): never merged."""

    fn: Callable[[], Any]
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)


class BatchQueue:
    """Serialises all model work on one worker thread and merges compatible generation jobs into one call.

    A batch starts with the oldest queued job; the worker waits up to ``max_wait_s`` after that job arrived for
    more jobs with the same settings, then runs up to ``max_batch_images`` images (prompts x images per prompt) in
    one pipeline call. A failed merged call is re-run one job at a time, so one bad job fails only itself.
    """

    def __init__(self, pipe, *, max_batch_images: int = 8, max_wait_s: float = 0.01, max_queue: int = 64):
        if isinstance(max_batch_images, bool) or not isinstance(max_batch_images, int) or max_batch_images < 1:
            raise InvalidInputError(f"max_batch_images must be an integer >= 1, got {max_batch_images!r}")
        if not (isinstance(max_wait_s, (int, float)) and 0 <= max_wait_s <= 10):
            raise InvalidInputError(f"max_wait_s must be in [0, 10] seconds, got {max_wait_s!r}")
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 1:
            raise InvalidInputError(f"max_queue must be an integer >= 1, got {max_queue!r}")
        self.pipe = pipe
        self.max_batch_images = max_batch_images
        self.max_wait_s = float(max_wait_s)
        self.max_queue = max_queue
        self._pending: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self.stats = {"calls": 0, "jobs": 0, "images": 0, "largest_batch": 0, "solo_retries": 0}
        self._thread = threading.Thread(target=self._loop, name="thinkgen-batch-queue", daemon=True)
        self._thread.start()

    # -- submitting
    def submit(self, job: GenJob | _Call) -> Future:
        if isinstance(job, GenJob) and job.settings.num_images > self.max_batch_images:
            raise InvalidInputError(
                f"n={job.settings.num_images} images exceeds this server's batch limit of {self.max_batch_images}; "
                "ask for fewer images per request or start the server with a larger --max-batch-images"
            )
        with self._cond:
            if self._closed:
                raise GenerationError("the server is shutting down; retry against a running server")
            if len(self._pending) >= self.max_queue:
                raise ServerBusyError(f"the request queue is full ({self.max_queue} waiting); retry later")
            self._pending.append(job)
            self._cond.notify_all()
        return job.future

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run ``fn()`` on the worker thread, alone (model access stays on one thread)."""
        return self.submit(_Call(fn))

    def queued(self) -> int:
        with self._cond:
            return len(self._pending)

    def close(self, timeout: float = 60.0) -> None:
        """Finish the running call, fail what is still queued, stop the worker."""
        with self._cond:
            self._closed = True
            left = list(self._pending)
            self._pending.clear()
            self._cond.notify_all()
        for job in left:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(GenerationError("the server shut down before this request ran; retry"))
        self._thread.join(timeout)

    # -- the worker
    def _take(self) -> list | None:
        with self._cond:
            while not self._pending and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            head = self._pending[0]
            if not isinstance(head, GenJob) or not head.mergeable:
                return [self._pending.popleft()]
            deadline = head.enqueued + self.max_wait_s
            while True:
                if self._closed:                  # close() has failed and dropped everything queued
                    return None
                batch = self._compatible(head)
                full = sum(j.settings.num_images for j in batch) + head.settings.num_images > self.max_batch_images
                left = deadline - time.monotonic()
                if full or left <= 0:
                    break
                self._cond.wait(left)
            for j in batch:
                self._pending.remove(j)
            return batch

    def _compatible(self, head: GenJob) -> list[GenJob]:
        batch, images = [], 0
        for j in self._pending:
            if isinstance(j, GenJob) and j.mergeable and j.settings == head.settings:
                if images + j.settings.num_images > self.max_batch_images:
                    break
                batch.append(j)
                images += j.settings.num_images
        return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            batch = [j for j in batch if j.future.set_running_or_notify_cancel()]   # skip cancelled ones
            if not batch:
                continue
            if isinstance(batch[0], _Call):
                self._settle(batch[0].future, batch[0].fn)
                continue
            try:
                results = self._generate(batch)
            except BaseException as e:  # noqa: BLE001 - every failure goes back to the callers
                if len(batch) == 1:
                    batch[0].future.set_exception(e)
                    continue
                self.stats["solo_retries"] += 1
                for j in batch:
                    self._settle(j.future, lambda j=j: self._generate([j])[0])
                continue
            for j, r in zip(batch, results):
                j.future.set_result(r)

    @staticmethod
    def _settle(future: Future, fn: Callable[[], Any]) -> None:
        try:
            future.set_result(fn())
        except BaseException as e:  # noqa: BLE001
            future.set_exception(e)

    def _generate(self, batch: list[GenJob]) -> list[JobResult]:
        s = batch[0].settings
        out = self.pipe(
            [j.prompt for j in batch],
            images=[j.images for j in batch] if batch[0].images else None,
            seed=[j.seed for j in batch],
            **s.pipeline_kwargs(),
        )
        n = s.num_images
        self.stats["calls"] += 1
        self.stats["jobs"] += len(batch)
        self.stats["images"] += len(out.images)
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
        return [
            JobResult(images=out.images[i * n:(i + 1) * n], thought=thoughts_only(out.thoughts[i]),
                      instruction=out.instructions[i],
                      finished=out.finished[i], seeds=out.seeds[i * n:(i + 1) * n], settings=dict(out.settings),
                      timings=dict(out.timings), batch_prompts=len(batch))
            for i in range(len(batch))
        ]


def thoughts_only(text: str) -> str:
    """The reasoning of a generation, without the think tags and the answer (all of it when think ran out)."""
    from .tokenization import THINK_END, THINK_START

    head = text.rpartition(THINK_END)[0] if THINK_END in text else text
    return head.replace(THINK_START, "").strip()


# ----------------------------------------------------------------------------------------------------- parsing
_SIZE = re.compile(r"^\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*$")
_DATA_URL = re.compile(r"^data:image/[A-Za-z0-9.+-]+;base64,", re.ASCII)


def parse_size(size) -> tuple[int | None, int | None]:
    """OpenAI ``size``: "auto" / None (the model's native size) or "WIDTHxHEIGHT" -> (height, width)."""
    if size is None or size == "auto":
        return None, None
    m = _SIZE.match(size) if isinstance(size, str) else None
    if not m:
        raise InvalidInputError(f"size must be 'auto' or 'WIDTHxHEIGHT' such as '1024x1024', got {size!r}")
    return int(m.group(2)), int(m.group(1))


def decode_image_string(text: str, name: str, max_bytes: int) -> bytes:
    """Base64 (optionally as a data: URL) -> bytes. Remote URLs are refused: the server fetches nothing."""
    if not isinstance(text, str) or not text:
        raise InvalidInputError(f"{name} must be a base64 string or a data:image/...;base64, URL")
    if text.startswith(("http://", "https://")):
        raise InvalidInputError(f"{name} is a remote URL; this server fetches nothing: send the image as base64 "
                                "or a data:image/png;base64,... URL")
    payload = _DATA_URL.sub("", text, count=1)
    if payload.startswith("data:"):
        raise InvalidInputError(f"{name} is a data URL that is not data:image/...;base64,")
    if len(payload) * 3 // 4 > max_bytes:
        raise InvalidInputError(f"{name} is larger than {max_bytes} bytes; send a smaller image")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInputError(f"{name} is not valid base64; encode the image file's bytes with base64") from None


def png_b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _models():
    """The request schemas (pydantic comes with fastapi: imported only when serving)."""
    from typing import Literal, Optional, Union

    from pydantic import BaseModel, ConfigDict, Field

    class ImageRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=False)
        prompt: str
        model: Optional[str] = None
        n: int = Field(1, ge=1, le=16)
        size: Optional[str] = "auto"
        response_format: str = "b64_json"
        user: Optional[str] = None
        # ThinkGen's own parameters
        think: Union[Literal["off", "on", "auto"], bool] = "off"
        seed: Optional[int] = Field(None, ge=0, le=2**62)
        num_inference_steps: Optional[int] = Field(None, ge=1, le=1000)
        text_guidance_scale: Optional[float] = Field(None, ge=0, le=30)
        image_guidance_scale: Optional[float] = Field(None, ge=0, le=30)
        cfg_range: Optional[tuple[float, float]] = None
        negative_prompt: Optional[str] = None
        max_think_tokens: Optional[int] = Field(None, ge=1, le=32768)
        max_answer_tokens: Optional[int] = Field(None, ge=1, le=8192)
        think_temperature: Optional[float] = Field(None, gt=0, le=10)
        think_top_p: Optional[float] = Field(None, gt=0, le=1)
        think_do_sample: Optional[bool] = None

    class EditRequest(ImageRequest):
        image: Union[str, list[str], None] = None       # JSON form: base64 or data URLs (multipart sends files)

    class ChatRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        messages: list[dict]
        model: Optional[str] = None
        max_tokens: Optional[int] = Field(None, ge=1, le=32768)
        max_completion_tokens: Optional[int] = Field(None, ge=1, le=32768)
        stream: bool = False
        n: int = 1
        user: Optional[str] = None

    return ImageRequest, EditRequest, ChatRequest


def _explain(err) -> str:
    """A pydantic ValidationError as one line per field: 'field: problem (got value)'."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e.get("loc", ())) or "body"
        if e.get("type") == "extra_forbidden":
            lines.append(f"{loc}: not a parameter of this endpoint; remove it")
        elif e.get("type") == "missing":
            lines.append(f"{loc}: required")
        else:
            lines.append(f"{loc}: {e.get('msg')} (got {e.get('input')!r})")
    return "; ".join(lines)


class ThinkSplitter:
    """Splits streamed reply text into ("reasoning_content", piece) inside ``<think>...</think>`` and ("content",
    piece) after it, holding back a partial tag that a chunk boundary cut."""

    def __init__(self):
        from .tokenization import THINK_END, THINK_START

        self.start, self.end = THINK_START, THINK_END
        self.buf, self.state = "", "before"       # before -> think -> after_think -> answer

    def feed(self, text: str) -> list[tuple[str, str]]:
        self.buf += text
        out: list[tuple[str, str]] = []
        while True:
            if self.state == "before":
                head = self.buf.lstrip()
                if head.startswith(self.start):
                    self.buf, self.state = head[len(self.start):].lstrip(), "think"
                elif self.start.startswith(head):     # "", "<", "<thi": wait for more
                    return out
                else:
                    self.state = "answer"
            elif self.state == "think":
                i = self.buf.find(self.end)
                if i >= 0:
                    if self.buf[:i].rstrip():
                        out.append(("reasoning_content", self.buf[:i].rstrip()))
                    self.buf, self.state = self.buf[i + len(self.end):], "after_think"
                    continue
                keep = next((k for k in range(min(len(self.end) - 1, len(self.buf)), 0, -1)
                             if self.end.startswith(self.buf[-k:])), 0)
                if len(self.buf) > keep:
                    out.append(("reasoning_content", self.buf[:len(self.buf) - keep]))
                    self.buf = self.buf[len(self.buf) - keep:]
                return out
            elif self.state == "after_think":
                self.buf = self.buf.lstrip()
                if not self.buf:
                    return out
                self.state = "answer"
            else:
                if self.buf:
                    out.append(("content", self.buf))
                    self.buf = ""
                return out

    def flush(self) -> list[tuple[str, str]]:
        rest, self.buf = self.buf, ""
        if not rest.strip():
            return []
        return [("reasoning_content" if self.state == "think" else "content", rest.rstrip())]


# ----------------------------------------------------------------------------------------------------- the service
class ThinkGenService:
    """Turns validated API requests into queue jobs and results into API responses (no HTTP here)."""

    def __init__(self, pipe, queue: BatchQueue, *, model_name: str, max_image_bytes: int = DEFAULT_MAX_REQUEST_BYTES):
        self.pipe = pipe
        self.queue = queue
        self.model_name = model_name
        self.max_image_bytes = max_image_bytes
        self.ImageRequest, self.EditRequest, self.ChatRequest = _models()

    def _validate(self, schema, body: dict):
        from pydantic import ValidationError

        if not isinstance(body, dict):
            raise InvalidInputError(f"the request body must be a JSON object, got {type(body).__name__}")
        try:
            req = schema.model_validate(body)
        except ValidationError as e:
            raise InvalidInputError(_explain(e)) from None
        if req.model not in (None, self.model_name):
            raise InvalidInputError(f"model {req.model!r} is not served here; this server serves {self.model_name!r} "
                                    "(omit model or name that one)")
        return req

    def _jobs(self, req, images: list[Image.Image]) -> list[GenJob]:
        if req.response_format != "b64_json":
            raise InvalidInputError(f"response_format {req.response_format!r} is not supported: this server hosts no "
                                    "files; use 'b64_json'")
        height, width = parse_size(req.size)
        think = {True: "on", False: "off"}.get(req.think, req.think)
        assert think in THINK_MODES
        settings = GenSettings(
            think=think, height=height, width=width, num_inference_steps=req.num_inference_steps,
            text_guidance_scale=req.text_guidance_scale, image_guidance_scale=req.image_guidance_scale,
            cfg_range=req.cfg_range, negative_prompt=req.negative_prompt, num_images=req.n,
            max_think_tokens=req.max_think_tokens, max_answer_tokens=req.max_answer_tokens,
            think_temperature=req.think_temperature, think_top_p=req.think_top_p, think_do_sample=req.think_do_sample,
        )
        return [self.job(req.prompt, settings, req.seed, images)]

    def job(self, prompt: str, settings: GenSettings, seed: int | None = None, images=()) -> GenJob:
        """One validated job (a random seed when ``seed`` is None; the response reports it)."""
        _as_prompts(prompt)
        seed = seed if seed is not None else random.randrange(2**31 - 1)
        return GenJob(prompt=prompt, seed=seed, settings=settings, images=list(images))

    def image_jobs(self, body: dict) -> list[GenJob]:
        return self._jobs(self._validate(self.ImageRequest, body), [])

    def edit_jobs(self, body: dict, files: list[bytes]) -> list[GenJob]:
        from .images import MAX_REFERENCE_IMAGES, load_image

        req = self._validate(self.EditRequest, body)
        raw = list(files)
        if req.image is not None:
            strings = [req.image] if isinstance(req.image, str) else list(req.image)
            raw += [decode_image_string(s, f"image[{i}]", self.max_image_bytes) for i, s in enumerate(strings)]
        if not raw:
            raise InvalidInputError("an edit needs at least one image: send it as the 'image' file field "
                                    "(multipart) or as base64 in 'image' (JSON)")
        if len(raw) > MAX_REFERENCE_IMAGES:
            raise InvalidInputError(f"{len(raw)} images sent; at most {MAX_REFERENCE_IMAGES} are supported")
        return self._jobs(req, [load_image(b) for b in raw])

    def image_response(self, results: list[JobResult]) -> dict:
        data, meta = [], []
        for r in results:
            data += [{"b64_json": png_b64(img), "revised_prompt": r.instruction} for img in r.images]
            meta.append({"thoughts": r.thought, "instruction": r.instruction, "finished": r.finished,
                         "seeds": r.seeds, "settings": r.settings, "timings": r.timings,
                         "batch_prompts": r.batch_prompts})
        return {"created": int(time.time()), "data": data, "thinkgen": meta[0] if len(meta) == 1 else meta}

    def chat_call(self, body: dict, streamer=None) -> tuple[Callable[[], str], Any]:
        """Validate a chat request; returns the model call to queue (feeding ``streamer`` if given) and the request."""
        req = self._validate(self.ChatRequest, body)
        if req.n != 1:
            raise InvalidInputError(f"n must be 1 for chat (decoding is greedy), got {req.n}")
        messages, images = self._chat_messages(req.messages)
        max_new = req.max_completion_tokens or req.max_tokens or 512
        return (lambda: self.pipe.chat(messages, images, max_new_tokens=max_new, streamer=streamer)), req

    def _chat_messages(self, raw: list[dict]):
        from .images import load_image

        if not raw:
            raise InvalidInputError("messages is empty; send at least one user message")
        messages, images = [], []
        for i, m in enumerate(raw):
            role, content = m.get("role"), m.get("content")
            if role not in ("system", "user", "assistant"):
                raise InvalidInputError(f"messages[{i}].role must be system, user or assistant, got {role!r}")
            if isinstance(content, str):
                messages.append({"role": role, "content": content})
                continue
            if not isinstance(content, list):
                raise InvalidInputError(f"messages[{i}].content must be a string or a list of parts")
            parts = []
            for k, p in enumerate(content):
                kind = p.get("type") if isinstance(p, dict) else None
                if kind == "text" and isinstance(p.get("text"), str):
                    parts.append({"type": "text", "text": p["text"]})
                elif kind == "image_url":
                    url = p.get("image_url")
                    url = url.get("url") if isinstance(url, dict) else url
                    raw_bytes = decode_image_string(url, f"messages[{i}].content[{k}].image_url", self.max_image_bytes)
                    images.append(load_image(raw_bytes))
                    parts.append({"type": "image"})
                else:
                    raise InvalidInputError(f"messages[{i}].content[{k}] must be {{'type': 'text', 'text': ...}} or "
                                            f"{{'type': 'image_url', 'image_url': {{'url': 'data:...'}}}}, got {p!r}")
            messages.append({"role": role, "content": parts})
        if not any(m["role"] == "user" for m in messages):
            raise InvalidInputError("messages has no user message; add one")
        return messages, images

    def chat_stream(self, streamer, future: Future):
        """Server-sent events of an OpenAI chat completion: the reasoning as ``reasoning_content`` deltas, then the
        answer as ``content`` deltas, a final chunk with ``finish_reason``, then ``[DONE]``. A failure of the queued
        call ends the stream with an ``error`` event."""
        import queue as _queue

        cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        def event(delta: dict, finish: str | None = None) -> str:
            return "data: " + json.dumps({"id": cid, "object": "chat.completion.chunk", "created": created,
                                          "model": self.model_name,
                                          "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}) + "\n\n"

        def failed() -> str:
            return "data: " + json.dumps({"error": {"message": str(future.exception()), "type": "server_error"}}) + "\n\n"

        yield event({"role": "assistant", "content": ""})
        split = ThinkSplitter()
        while True:
            try:
                text = next(streamer)
            except StopIteration:
                break
            except _queue.Empty:                          # still queued or thinking: is the call alive?
                if future.done() and future.exception() is not None:
                    yield failed()
                    yield "data: [DONE]\n\n"
                    return
                continue
            for kind, piece in split.feed(text):
                yield event({kind: piece})
        for kind, piece in split.flush():
            yield event({kind: piece})
        if future.exception() is not None:                # waits for the call to return
            yield failed()
        else:
            yield event({}, "length" if split.state == "think" else "stop")
        yield "data: [DONE]\n\n"

    def chat_response(self, reply: str) -> dict:
        """OpenAI chat completion; the model's reasoning goes to ``reasoning_content`` (as vLLM / DeepSeek do)."""
        from .tokenization import THINK_END, THINK_START

        if THINK_END in reply:
            thoughts, answer, finish = thoughts_only(reply), reply.rpartition(THINK_END)[2].strip(), "stop"
        elif THINK_START in reply:                     # ran out of tokens while thinking
            thoughts, answer, finish = thoughts_only(reply), "", "length"
        else:
            thoughts, answer, finish = "", reply.strip(), "stop"
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": self.model_name,
            "choices": [{"index": 0, "finish_reason": finish,
                         "message": {"role": "assistant", "content": answer, "reasoning_content": thoughts}}],
        }


# ----------------------------------------------------------------------------------------------------- HTTP
def _error(status: int, message: str, kind: str = "invalid_request_error"):
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind}})


def _default_name(source: str) -> str:
    """A checkpoint folder serves as its folder name ("nano"), a hub id as itself."""
    if not source:
        return "thinkgen"
    return os.path.basename(os.path.normpath(source)) if os.path.isdir(source) else source


def create_app(pipe, *, model_name: str | None = None, max_batch_images: int = 8, max_wait_s: float = 0.01,
               max_queue: int = 64, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, ui: bool = True,
               api_key: str | None = None):
    """A FastAPI app serving ``pipe`` (see the module docstring). The queue stops when the app shuts down.

    ``api_key``: when set, every ``/v1/`` request must send ``Authorization: Bearer <api_key>`` (HTTP 401 otherwise)
    and the UI asks for the user "thinkgen" with the key as password; ``/health`` stays open.
    """
    import hmac

    import asyncio
    import contextlib

    require_serve_extra(ui=ui)
    from fastapi import FastAPI, Request

    if api_key is not None and (not isinstance(api_key, str) or len(api_key) < 8):
        raise InvalidInputError("api_key must be a string of at least 8 characters (or None for an open server)")
    if isinstance(max_request_bytes, bool) or not isinstance(max_request_bytes, int) or max_request_bytes < 1024:
        raise InvalidInputError(f"max_request_bytes must be an integer >= 1024, got {max_request_bytes!r}")
    queue = BatchQueue(pipe, max_batch_images=max_batch_images, max_wait_s=max_wait_s, max_queue=max_queue)
    name = model_name or _default_name(getattr(pipe, "name", ""))
    service = ThinkGenService(pipe, queue, model_name=name, max_image_bytes=max_request_bytes)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        queue.close()

    app = FastAPI(title="thinkgen", lifespan=lifespan,
                  description="ThinkGen: the MLLM thinks, writes an instruction, the DiT draws it.")
    app.state.service = service
    app.state.queue = queue

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        if api_key is not None and request.url.path.startswith("/v1/"):
            sent = request.headers.get("authorization", "")
            if not hmac.compare_digest(sent.encode(), f"Bearer {api_key}".encode()):
                return _error(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                              "invalid_api_key")
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_request_bytes:
            return _error(413, f"request body of {length} bytes exceeds this server's limit of {max_request_bytes}; "
                               "send smaller images or start the server with a larger --max-request-mb")
        return await call_next(request)

    async def run(work):
        """Parse/validate (may raise), queue, await; errors become OpenAI-style JSON."""
        try:
            value = await work()
        except ServerBusyError as e:
            return _error(503, str(e), "server_busy")
        except InvalidInputError as e:
            return _error(400, str(e))
        except ThinkgenError as e:
            return _error(500, str(e), "server_error")
        return value

    async def json_body(request: Request) -> Any:
        try:
            return await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InvalidInputError("the request body is not valid JSON") from None

    async def wait_all(futures):
        return [await asyncio.wrap_future(f) for f in futures]

    @app.post("/v1/images/generations")
    async def generations(request: Request):
        async def work():
            jobs = service.image_jobs(await json_body(request))
            return service.image_response(await wait_all([queue.submit(j) for j in jobs]))
        return await run(work)

    @app.post("/v1/images/edits")
    async def edits(request: Request):
        async def work():
            ctype = request.headers.get("content-type", "")
            files: list[bytes] = []
            if ctype.startswith("multipart/form-data"):
                body = {}
                form = await request.form()
                for key, value in form.multi_items():
                    if key in ("image", "image[]"):
                        if isinstance(value, str):
                            raise InvalidInputError(f"form field {key!r} must be a file upload")
                        files.append(await value.read())
                    elif key == "cfg_range":
                        try:
                            body[key] = [float(x) for x in str(value).replace(",", " ").split()]
                        except ValueError:
                            raise InvalidInputError(f"cfg_range must be two numbers such as '0 1', got {value!r}") from None
                    else:
                        body[key] = value
            else:
                body = await json_body(request)
            jobs = service.edit_jobs(body, files)
            return service.image_response(await wait_all([queue.submit(j) for j in jobs]))
        return await run(work)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        async def work():
            body = await json_body(request)
            if isinstance(body, dict) and body.get("stream") is True:
                from fastapi.responses import StreamingResponse
                from transformers import TextIteratorStreamer

                streamer = TextIteratorStreamer(pipe.mllm.tokenizer, skip_prompt=True, skip_special_tokens=True,
                                                timeout=0.5)
                fn, _ = service.chat_call(body, streamer)        # validates before the stream starts
                return StreamingResponse(service.chat_stream(streamer, queue.call(fn)), media_type="text/event-stream")
            fn, _ = service.chat_call(body)
            reply = await asyncio.wrap_future(queue.call(fn))
            return service.chat_response(reply)
        return await run(work)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "thinkgen"}]}

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": name, "device": str(pipe.device), "queued": queue.queued(),
                "max_batch_images": queue.max_batch_images, "stats": dict(queue.stats)}

    if ui:
        import gradio as gr

        from .ui import build_ui

        app = gr.mount_gradio_app(app, build_ui(service), path="/ui",
                                  auth=("thinkgen", api_key) if api_key is not None else None)
    return app


def serve(pipe, *, host: str = "127.0.0.1", port: int = 8000, **app_kwargs) -> None:
    """Run the app with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(create_app(pipe, **app_kwargs), host=host, port=port, log_level="info")
