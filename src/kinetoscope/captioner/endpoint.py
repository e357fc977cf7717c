"""Captions for real footage from a vision-language model behind an OpenAI-compatible endpoint.

The trained world captioner knows only the synthetic world. For a user's own videos,
`EndpointCaptioner` samples frames evenly over the whole clip, scales them down, and sends
them as images in one chat message to any server that speaks the protocol (a local vLLM,
llama.cpp or Ollama serving a vision model), asking for one caption in the descriptive style
a video model trains on.

    captioner = EndpointCaptioner("http://localhost:8000/v1", "qwen2.5-vl-7b")
    captioner.caption_file("beach.mp4")
"""

from __future__ import annotations

import base64
import io
import os

import numpy as np
from PIL import Image

from kinetoscope.io import probe, read_video
from kinetoscope.text.chat import ChatClient

INSTRUCTION = (
    "These are {count} frames sampled evenly, in order, from one video clip of {seconds} "
    "seconds. Write one caption of the whole clip, as a single paragraph of two to four "
    "sentences: the main subjects with their colours, sizes and positions; what moves, how and "
    "in which direction; the camera's motion; the setting, light and style. Describe only what "
    "is visible. Answer with the caption only."
)


def frame_image(frame: np.ndarray, max_side: int) -> str:
    """A frame (H W 3 uint8) as a JPEG data URL, its longer side scaled down to `max_side`."""
    image = Image.fromarray(frame)
    scale = max_side / max(image.size)
    if scale < 1:
        image = image.resize((max(1, round(image.width * scale)),
                              max(1, round(image.height * scale))), Image.BICUBIC)  # fmt: skip
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class EndpointCaptioner:
    """Captions by a vision model of an OpenAI-compatible chat endpoint.

    `frames` images are sent per clip (an image file is one), each at most `max_side` pixels
    on its longer side. Errors from the endpoint are `ValueError`s that say what to check."""

    def __init__(
        self, url: str, model: str, frames: int = 8, max_side: int = 512,
        timeout: float = 120.0, retries: int = 2,
    ) -> None:  # fmt: skip
        if frames < 1 or max_side < 16:
            raise ValueError(f"frames must be >= 1 and max_side >= 16, got {frames}, {max_side}")
        self.chat = ChatClient(url, model, timeout, retries, what="captioning endpoint")
        self.frames = frames
        self.max_side = max_side
        self.name = f"{model} at {self.chat.url}"

    def sample_frames(self, path: str | os.PathLike) -> tuple[np.ndarray, float]:
        """`frames` frames (T H W 3 uint8) spread evenly over the file, and its duration (s)."""
        info = probe(path)
        step = max(1, info.frames // self.frames)
        video = read_video(path, step=step, max_frames=self.frames)
        return video, info.duration

    def caption_file(self, path: str | os.PathLike) -> str:
        """The endpoint's caption of a video or image file."""
        video, seconds = self.sample_frames(path)
        text = INSTRUCTION.format(count=len(video), seconds=f"{seconds:.1f}")
        if len(video) == 1:
            text = ("This is one image. Write one caption of it, as a single paragraph of two "
                    "to four sentences: the main subjects with their colours, sizes and "
                    "positions; the setting, light and style. Answer with the caption only.")  # fmt: skip
        content = [{"type": "text", "text": text}] + [
            {"type": "image_url", "image_url": {"url": frame_image(frame, self.max_side)}}
            for frame in video
        ]
        return self.chat.complete([{"role": "user", "content": content}], temperature=0.2)


__all__ = ["EndpointCaptioner", "frame_image"]
