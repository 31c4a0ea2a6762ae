"""Frame selection alone: plain lists of timestamps in, kept indices out."""

from __future__ import annotations

import logging

import pytest
from pydantic import ValidationError

from pipeline.decode import select_frames
from ralf.core.options import Sampling

CFR_24_AT_12 = [i / 12 for i in range(24)]  # 2.0 s at 12 fps


def test_sampling_allows_at_most_one_mode() -> None:
    with pytest.raises(ValidationError, match="at most one"):
        Sampling(every_n=2, max_frames=4)
    with pytest.raises(ValidationError):
        Sampling(every_n=0)
    with pytest.raises(ValidationError):
        Sampling(target_fps=-1.0)


def test_no_mode_keeps_every_frame() -> None:
    assert select_frames(Sampling(), CFR_24_AT_12) == list(range(24))


def test_every_n() -> None:
    assert select_frames(Sampling(every_n=5), CFR_24_AT_12) == [0, 5, 10, 15, 20]


def test_target_fps_on_constant_rate() -> None:
    assert select_frames(Sampling(target_fps=4.0), CFR_24_AT_12) == [0, 3, 6, 9, 12, 15, 18, 21]
    # Asking for more than the video has keeps every frame once.
    assert select_frames(Sampling(target_fps=30.0), CFR_24_AT_12) == list(range(24))


def test_target_fps_on_variable_rate_uses_time_not_index() -> None:
    times = [0.0, 0.1, 0.15, 0.4, 0.45, 0.5, 1.0, 1.2, 1.49, 1.51]
    # 2 fps: first frame at/after 0.0, 0.5, 1.0, 1.5 s.
    assert select_frames(Sampling(target_fps=2.0), times) == [0, 5, 6, 9]


def test_max_frames_spreads_over_duration() -> None:
    kept = select_frames(Sampling(max_frames=4), CFR_24_AT_12, duration_s=2.0)
    assert kept == [0, 6, 12, 18]
    assert select_frames(Sampling(max_frames=100), CFR_24_AT_12, duration_s=2.0) == list(range(24))


def test_max_frames_never_exceeds_k_when_duration_is_underestimated() -> None:
    kept = select_frames(Sampling(max_frames=4), CFR_24_AT_12, duration_s=1.0)
    assert kept == [0, 3, 6, 9]


def test_max_frames_falls_back_to_frame_count_without_duration() -> None:
    kept = select_frames(Sampling(max_frames=3), CFR_24_AT_12, duration_s=None, num_frames=24)
    assert kept == [0, 8, 16]


def test_max_frames_without_any_length_keeps_first_k_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        kept = select_frames(Sampling(max_frames=3), CFR_24_AT_12)
    assert kept == [0, 1, 2]
    assert "length unknown" in caplog.text
