"""A frame check that dies like a decoder crash on one URL (for the FrameChecker test; workers import it)."""

from __future__ import annotations

import os
import time

from video_index.adapters.probe import FrameCheck
from video_index.domain.health import FrameStats


def check(url: str, open_timeout_s: float, read_timeout_s: float, interval_s: float) -> FrameCheck:
    if "crash" in url:
        time.sleep(0.2)  # others are running beside it in the pool when it dies
        os.abort()
    time.sleep(0.5)
    return FrameCheck([FrameStats(0, 100.0, 50.0, 500.0, 0.0)], b"\xff\xd8", None)
