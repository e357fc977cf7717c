"""The Gradio page of `kinetoscope demo`: one form for every mode, results and history.

`build_app(demo)` returns a `gradio.Blocks`; `serve(demo, ...)` queues and launches it. The
handlers only translate between the page's fields and `Demo.run` (see `web.demo`).
"""

from __future__ import annotations

import os
import time
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves the machine

import gradio as gr

from .demo import INPUT_SIZE, MODES, SIZE_PRESETS, Demo, Request

# Fields of `Request` in the order the handler receives them from the page.
FIELDS = ("mode", "prompt", "negative", "size", "width", "height", "frames", "steps",
          "guidance", "seed", "sampler", "output", "image", "loop", "video", "second",
          "direction", "strength", "storyboard", "expand")  # fmt: skip
HELP = {
    "text": "Text to video. Past 65 frames the video is made window by window.",
    "animate": "The image is the first frame; the prompt says how it moves.",
    "extend": "Adds 'Frames' new frames after the video's end, or before its start.",
    "connect": "The first video, a transition of 'Frames' frames (a multiple of 4), the second.",
    "edit": "Re-generates the video under the prompt: strength 0 keeps it, 1 ignores it.",
    "storyboard": "One 'FRAMES PROMPT' line per segment; each continues the last.",
}


def _visible(mode: str) -> list[Any]:
    """Visibility of the mode-specific fields (in `_mode_fields` order) and the help text."""
    shown = {
        "image": mode == "animate",
        "loop": mode in ("text", "animate"),
        "video": mode in ("extend", "edit", "connect"),
        "second": mode == "connect",
        "direction": mode == "extend",
        "strength": mode == "edit",
        "storyboard": mode == "storyboard",
    }
    return [gr.update(visible=value) for value in shown.values()] + [HELP[mode]]


def build_app(demo: Demo) -> gr.Blocks:
    """The page: prompt and mode, the mode's inputs, settings, the result and the history."""
    limits = demo.limits
    with gr.Blocks(title="kinetoscope") as app:
        gr.Markdown(
            "# kinetoscope\nVideos from text, images and videos with one diffusion "
            f"transformer. Limits: {limits.max_side} px a side, {limits.max_frames} frames, "
            f"{limits.max_steps} steps."
        )
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                mode = gr.Radio(
                    [(label, key) for key, label in MODES.items()], value="text", label="Mode"
                )
                hint = gr.Markdown(HELP["text"])
                prompt = gr.Textbox(label="Prompt", lines=2, elem_id="prompt",
                                    placeholder="a large red circle moving right")  # fmt: skip
                image = gr.Image(label="Image", type="filepath", visible=False, elem_id="image")
                loop = gr.Checkbox(label="Loop seamlessly", value=False)
                video = gr.File(label="Video", file_types=["video"], visible=False,
                                elem_id="video")  # fmt: skip
                second = gr.File(label="Second video", file_types=["video"], visible=False)
                direction = gr.Radio(["forward", "backward"], value="forward",
                                     label="Direction", visible=False)  # fmt: skip
                strength = gr.Slider(0, 1, value=Request.strength, step=0.05, label="Strength",
                                     visible=False)  # fmt: skip
                storyboard = gr.Textbox(label="Storyboard", lines=4, visible=False,
                                        placeholder="33 a red circle moving right\n"
                                        "32 a red circle falling")  # fmt: skip
                expand = gr.Checkbox(
                    label="Expand the prompt (fill in size, motion and background as the model "
                    "was trained)", value=False, elem_id="expand",
                )  # fmt: skip
                button = gr.Button("Generate", variant="primary", elem_id="generate")
                with gr.Accordion("Settings", open=True):
                    negative = gr.Textbox(label="Negative prompt", value="")
                    size = gr.Dropdown([*SIZE_PRESETS, INPUT_SIZE], value=Request.size,
                                       label="Size", elem_id="size")  # fmt: skip
                    with gr.Row():
                        width = gr.Number(value=96, precision=0, label="Width (custom)",
                                          elem_id="width")  # fmt: skip
                        height = gr.Number(value=64, precision=0, label="Height (custom)",
                                           elem_id="height")  # fmt: skip
                    frames = gr.Slider(1, limits.max_frames, value=min(Request.frames, limits.max_frames), step=1,
                                       label="Frames", elem_id="frames")  # fmt: skip
                    steps = gr.Slider(1, limits.max_steps, value=min(Request.steps, limits.max_steps), step=1,
                                      label="Steps")  # fmt: skip
                    guidance = gr.Slider(1, 10, value=Request.guidance, step=0.5,
                                         label="Guidance")  # fmt: skip
                    with gr.Row():
                        seed = gr.Number(value=-1, precision=0, label="Seed (-1: random)")
                        sampler = gr.Radio(["euler", "heun"], value="euler", label="Sampler")
                        output = gr.Radio(["mp4", "gif", "png"], value="mp4", label="Format")
            with gr.Column(scale=1, min_width=320):
                result_video = gr.Video(label="Result", autoplay=True, loop=True,
                                        elem_id="result")  # fmt: skip
                result_image = gr.Image(label="Result", visible=False, elem_id="result-image")
                download = gr.File(label="Download", elem_id="download")
                info = gr.Markdown(elem_id="info")
                history = gr.Gallery(label="History (this session)", columns=4,
                                     elem_id="history")  # fmt: skip

        mode_fields = [image, loop, video, second, direction, strength, storyboard]
        mode.change(_visible, mode, [*mode_fields, hint])
        inputs = [mode, prompt, negative, size, width, height, frames, steps, guidance, seed,
                  sampler, output, image, loop, video, second, direction, strength, storyboard,
                  expand]  # fmt: skip

        def generate(*values, progress=gr.Progress(track_tqdm=True)):  # noqa: B008 (gradio's way)
            fields = dict(zip(FIELDS, values, strict=True))
            for key in ("video", "second"):  # gr.File gives a path (or an object with .name)
                fields[key] = getattr(fields[key], "name", fields[key])
            try:
                result = demo.run(Request(**fields))
            except (ValueError, OSError) as error:
                raise gr.Error(str(error), print_exception=False) from None
            is_video = result.playable is not None
            return (
                gr.update(value=str(result.playable) if is_video else None, visible=is_video),
                gr.update(value=None if is_video else str(result.path), visible=not is_video),
                str(result.path),
                result.summary,
                demo.gallery(),
            )

        button.click(generate, inputs,
                     [result_video, result_image, download, info, history])  # fmt: skip
    return app


def launch(demo: Demo, host: str, port: int, concurrency: int = 1) -> gr.Blocks:
    """Build the app, queue it (`concurrency` jobs at a time) and start serving it in the
    background; returns it (`close()` stops it)."""
    app = build_app(demo)
    app.queue(default_concurrency_limit=concurrency)
    app.launch(server_name=host, server_port=port, prevent_thread_lock=True, quiet=True,
               allowed_paths=[str(demo.out_dir)], show_error=True)  # fmt: skip
    return app


def serve(demo: Demo, host: str, port: int, concurrency: int = 1) -> None:
    """Serve the app until Ctrl-C, then stop it cleanly."""
    app = launch(demo, host, port, concurrency)
    print(f"kinetoscope demo: http://{host}:{port} (Ctrl-C stops it)", flush=True)
    try:
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("stopping", flush=True)
    finally:
        app.close()


__all__ = ["FIELDS", "build_app", "launch", "serve"]
