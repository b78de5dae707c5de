"""Gradio UI over the serving queue: generate, edit, understand. Mounted at ``/ui`` by :func:`thinkgen.server.create_app`.

The handlers go through the same :class:`~thinkgen.server.BatchQueue` as the HTTP API, so UI users and API clients
share one model, one worker thread and its batching. Each handler shows what ThinkGen thought and the instruction it
handed the painter next to the image.
"""
from __future__ import annotations

from .errors import InvalidInputError, ThinkgenError


def _gr_error(e: Exception):
    import gradio as gr

    return gr.Error(str(e))


def make_handlers(service):
    """The three UI actions as plain functions (what the Blocks call; also callable without a browser)."""
    from .server import GenSettings

    d = service.pipe.defaults

    def settings(think, steps, n, height=None, width=None):
        return GenSettings(think=think, num_inference_steps=int(steps), num_images=int(n),
                           height=int(height) if height else None, width=int(width) if width else None)

    def generate(prompt, think, seed, steps, n, height, width):
        try:
            job = service.job(prompt, settings(think, steps, n, height, width), int(seed))
            r = service.queue.submit(job).result()
        except (InvalidInputError, ThinkgenError, ValueError) as e:
            raise _gr_error(e) from None
        return r.images, r.thought, r.instruction

    def edit(image, instruction, think, seed, steps):
        from .images import load_image

        if image is None:
            raise _gr_error(InvalidInputError("upload an image to edit"))
        try:
            job = service.job(instruction, settings(think, steps, 1), int(seed), [load_image(image)])
            r = service.queue.submit(job).result()
        except (InvalidInputError, ThinkgenError, ValueError) as e:
            raise _gr_error(e) from None
        return r.images[0], r.thought, r.instruction

    def understand(image, question):
        from .mllm import split_thoughts

        images = [] if image is None else [image]
        try:
            reply = service.queue.call(lambda: service.pipe.chat(question, images)).result()
        except (InvalidInputError, ThinkgenError, ValueError) as e:
            raise _gr_error(e) from None
        thoughts, answer = split_thoughts(reply)
        return answer, thoughts

    return {"generate": generate, "edit": edit, "understand": understand,
            "defaults": {"steps": d.get("num_inference_steps", 50), "height": d.get("height", 1024),
                         "width": d.get("width", 1024)}}


def build_ui(service):
    import gradio as gr

    h = make_handlers(service)
    steps0, h0, w0 = h["defaults"]["steps"], h["defaults"]["height"], h["defaults"]["width"]
    think_modes = ["off", "on", "auto"]
    with gr.Blocks(title=f"thinkgen: {service.model_name}") as demo:
        gr.Markdown(f"## thinkgen · `{service.model_name}`\nThe MLLM thinks, writes an instruction, the DiT draws it.")
        with gr.Tab("Generate"):
            with gr.Row():
                with gr.Column():
                    prompt = gr.Textbox(label="Prompt", lines=2)
                    think = gr.Radio(think_modes, value="on", label="Think")
                    with gr.Row():
                        seed = gr.Number(value=0, precision=0, label="Seed")
                        steps = gr.Slider(1, 100, value=steps0, step=1, label="Steps")
                        n = gr.Slider(1, 4, value=1, step=1, label="Images")
                    with gr.Row():
                        height = gr.Number(value=h0, precision=0, label="Height")
                        width = gr.Number(value=w0, precision=0, label="Width")
                    go = gr.Button("Generate", variant="primary")
                with gr.Column():
                    gallery = gr.Gallery(label="Images")
                    instruction = gr.Textbox(label="Instruction the painter saw")
                    thoughts = gr.Textbox(label="Thoughts", lines=6)
            go.click(h["generate"], [prompt, think, seed, steps, n, height, width], [gallery, thoughts, instruction])
        with gr.Tab("Edit"):
            with gr.Row():
                with gr.Column():
                    src = gr.Image(type="pil", label="Image")
                    ins = gr.Textbox(label="Edit instruction", lines=2)
                    e_think = gr.Radio(think_modes, value="on", label="Think")
                    with gr.Row():
                        e_seed = gr.Number(value=0, precision=0, label="Seed")
                        e_steps = gr.Slider(1, 100, value=steps0, step=1, label="Steps")
                    e_go = gr.Button("Edit", variant="primary")
                with gr.Column():
                    dst = gr.Image(type="pil", label="Result")
                    e_instruction = gr.Textbox(label="Instruction the painter saw")
                    e_thoughts = gr.Textbox(label="Thoughts", lines=6)
            e_go.click(h["edit"], [src, ins, e_think, e_seed, e_steps], [dst, e_thoughts, e_instruction])
        with gr.Tab("Understand"):
            with gr.Row():
                with gr.Column():
                    u_img = gr.Image(type="pil", label="Image")
                    question = gr.Textbox(label="Question")
                    u_go = gr.Button("Ask", variant="primary")
                with gr.Column():
                    answer = gr.Textbox(label="Answer")
                    u_thoughts = gr.Textbox(label="Thoughts", lines=6)
            u_go.click(h["understand"], [u_img, question], [answer, u_thoughts])
    return demo
