"""Video and image files in and out (PyAV), and uint8 <-> float conversions."""

from .convert import as_uint8_frames, to_float, to_uint8
from .errors import VideoReadError
from .paths import check_output_file, check_output_folder
from .read import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, VideoInfo, as_fraction, probe, read_video
from .write import write_frames, write_image, write_video

__all__ = [
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "VideoInfo",
    "VideoReadError",
    "as_fraction",
    "as_uint8_frames",
    "check_output_file",
    "check_output_folder",
    "probe",
    "read_video",
    "to_float",
    "to_uint8",
    "write_frames",
    "write_image",
    "write_video",
]
