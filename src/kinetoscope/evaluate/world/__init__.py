"""The world benchmark: a pixel analyzer of world videos and scores against scene specs."""

from .analyze import ObjectTrack, SceneAnalysis, analyze
from .generate import generate_suite
from .motion import MotionFit, fit_motion
from .report import contact_sheet, evaluate_folder, summary_table
from .scores import (
    AGREEMENT,
    SCORE_NAMES,
    agreement,
    match_objects,
    reference_analysis,
    score,
    score_video,
)
from .suites import (
    SUITE_VERSION,
    SUITES,
    SuiteEntry,
    read_suite,
    render_suite,
    suite,
    write_suite,
)

__all__ = [
    "AGREEMENT",
    "SCORE_NAMES",
    "SUITES",
    "SUITE_VERSION",
    "MotionFit",
    "ObjectTrack",
    "SceneAnalysis",
    "SuiteEntry",
    "agreement",
    "analyze",
    "contact_sheet",
    "evaluate_folder",
    "fit_motion",
    "generate_suite",
    "match_objects",
    "read_suite",
    "reference_analysis",
    "render_suite",
    "score",
    "score_video",
    "suite",
    "summary_table",
    "write_suite",
]
