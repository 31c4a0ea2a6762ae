"""Greedy IoU tracking of face boxes across sampled frames, so each person gets one track id."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.ops import box_iou


@dataclass
class Track:
    """One person's run of boxes; frame numbers and times are those passed to `IouTracker.update`."""

    track_id: int
    first_frame: int
    first_timestamp_s: float
    last_frame: int
    last_timestamp_s: float
    last_box: torch.Tensor
    detections: int = 1
    missed_updates: int = 0


class IouTracker:
    """Associates each frame's boxes with the tracks alive in the previous sampled frames.

    Matching is greedy: box/track pairs are taken by decreasing IoU (against the track's last box)
    while IoU >= `iou_threshold`; each box and track is used once. Unmatched boxes start new tracks.
    A track that finds no box in more than `max_gap` consecutive updates ends and is never matched
    again. The gap is counted in updates (sampled frames), not seconds, so it behaves the same
    whether frames are sampled at 30 fps or one per minute.
    """

    def __init__(self, iou_threshold: float = 0.3, max_gap: int = 2) -> None:
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        if max_gap < 0:
            raise ValueError(f"max_gap must be >= 0, got {max_gap}")
        self.iou_threshold = iou_threshold
        self.max_gap = max_gap
        self._active: list[Track] = []
        self._tracks: dict[int, Track] = {}
        self._last_frame: int | None = None

    @property
    def tracks(self) -> list[Track]:
        """Every track started so far, ended or not, in order of track id."""
        return [self._tracks[track_id] for track_id in sorted(self._tracks)]

    def update(self, frame_index: int, timestamp_s: float, boxes: torch.Tensor) -> list[int]:
        """Track ids for `boxes` (K, 4) xyxy of one sampled frame, in the same order.

        Call once per sampled frame in increasing frame order, also for frames without boxes
        (K = 0), so that gaps are counted.
        """
        if self._last_frame is not None and frame_index <= self._last_frame:
            raise ValueError(f"frames must arrive in increasing order: {frame_index} after {self._last_frame}")
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"boxes must be (K, 4), got {tuple(boxes.shape)}")
        self._last_frame = frame_index
        boxes = boxes.detach().to("cpu", torch.float32)

        assigned = self._match(boxes)
        matched_tracks = set()
        ids: list[int] = []
        for box_index, box in enumerate(boxes):
            track = assigned.get(box_index)
            if track is None:
                track = Track(
                    track_id=len(self._tracks),
                    first_frame=frame_index,
                    first_timestamp_s=timestamp_s,
                    last_frame=frame_index,
                    last_timestamp_s=timestamp_s,
                    last_box=box.clone(),
                )
                self._tracks[track.track_id] = track
                self._active.append(track)
            else:
                track.last_frame = frame_index
                track.last_timestamp_s = timestamp_s
                track.last_box = box.clone()
                track.detections += 1
                track.missed_updates = 0
            matched_tracks.add(track.track_id)
            ids.append(track.track_id)

        for track in self._active:
            if track.track_id not in matched_tracks:
                track.missed_updates += 1
        self._active = [t for t in self._active if t.missed_updates <= self.max_gap]
        return ids

    def _match(self, boxes: torch.Tensor) -> dict[int, Track]:
        """Greedy highest-IoU-first assignment of boxes to active tracks."""
        if not self._active or boxes.shape[0] == 0:
            return {}
        previous = torch.stack([t.last_box for t in self._active])
        overlaps = box_iou(boxes, previous)
        pairs = torch.nonzero(overlaps >= self.iou_threshold)
        order = torch.argsort(overlaps[pairs[:, 0], pairs[:, 1]], descending=True, stable=True)
        assigned: dict[int, Track] = {}
        used_tracks: set[int] = set()
        for box_index, track_index in pairs[order].tolist():
            if box_index in assigned or track_index in used_tracks:
                continue
            assigned[box_index] = self._active[track_index]
            used_tracks.add(track_index)
        return assigned
