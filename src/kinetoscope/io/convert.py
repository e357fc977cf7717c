"""Conversions between `T H W 3` uint8 frames (files, UI) and `C T H W` float videos in [-1, 1].

The mapping is x = u / 127.5 - 1, so 0 -> -1 and 255 -> 1, and `to_uint8(to_float(u)) == u`
exactly for every uint8 value.
"""

from __future__ import annotations

import numpy as np
import torch


def as_uint8_frames(frames: np.ndarray | torch.Tensor) -> np.ndarray:
    """Check frames; return them as a contiguous `T H W 3` uint8 array (copied only if needed)."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        hint = " (add a frame axis: frame[None])" if frames.ndim == 3 else ""
        raise ValueError(f"frames must have shape (T, H, W, 3), got {tuple(frames.shape)}{hint}")
    if frames.dtype != np.uint8:
        raise ValueError(
            f"frames must be uint8, got {frames.dtype}; convert float videos in [-1, 1] "
            "with to_uint8"
        )
    if 0 in frames.shape:
        raise ValueError(f"frames must not be empty, got shape {tuple(frames.shape)}")
    return np.ascontiguousarray(frames)


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    array = np.ascontiguousarray(array)  # torch.from_numpy rejects negative strides (np.flip)
    if not array.flags.writeable:  # and warns on read-only arrays
        array = array.copy()
    return torch.from_numpy(array)


def to_float(
    frames: np.ndarray | torch.Tensor,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """uint8 frames `T H W 3` -> float video `C T H W` in [-1, 1]; `B T H W 3` -> `B C T H W`.

    Accepts numpy arrays or torch tensors. The uint8 data moves to `device` before the conversion,
    so a GPU transfer carries a quarter of the bytes.
    """
    video = frames if isinstance(frames, torch.Tensor) else _as_tensor(frames)
    if video.dtype != torch.uint8:
        raise ValueError(f"to_float expects uint8 frames, got {video.dtype}")
    if video.ndim not in (4, 5) or video.shape[-1] != 3:
        raise ValueError(
            f"to_float expects (T, H, W, 3) or (B, T, H, W, 3) frames, got {tuple(video.shape)}"
        )
    video = video.to(device).movedim(-1, -4).contiguous()  # (B) C T H W uint8
    return video.to(dtype).div_(127.5).sub_(1.0)


def to_uint8(video: torch.Tensor | np.ndarray) -> np.ndarray:
    """Float video `C T H W` in [-1, 1] -> `T H W 3` uint8 numpy; `B C T H W` -> `B T H W 3`.

    Values are clamped to [-1, 1] and rounded; NaN becomes mid-grey (0.0) rather than garbage.
    """
    x = (video if isinstance(video, torch.Tensor) else _as_tensor(video)).detach()
    if not x.is_floating_point():
        raise ValueError(f"to_uint8 expects a float video in [-1, 1], got {x.dtype}")
    if x.ndim not in (4, 5) or x.shape[-4] != 3:
        raise ValueError(
            f"to_uint8 expects (3, T, H, W) or (B, 3, T, H, W), got {tuple(x.shape)}; "
            "channels must come first"
        )
    x = torch.nan_to_num(x.float(), nan=0.0)
    x = x.add(1.0).mul_(127.5).round_().clamp_(0, 255).to(torch.uint8)  # on x's own device
    return x.movedim(-4, -1).contiguous().cpu().numpy()  # (B) T H W 3 uint8
