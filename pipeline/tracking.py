"""Greedy tracking of face boxes across sampled frames, so each person gets one track id.

Association is by overlap first and by nearness second: at the default sampling (2 fps) a
moving face can shift by more than its own width between sampled frames, so its boxes no
longer overlap enough although they obviously belong to the same person.
"""

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


def box_sides(boxes: torch.Tensor) -> torch.Tensor:
    """Mean of width and height of each xyxy box, (K, 4) -> (K,)."""
    return ((boxes[:, 2] - boxes[:, 0]) + (boxes[:, 3] - boxes[:, 1])) / 2


def relative_center_distance(boxes: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """(K, T) distance between box centres divided by the pair's mean box side.

    0 is the same place; 1 means the centres are one face-size apart.
    """
    centers = (boxes[:, :2] + boxes[:, 2:]) / 2
    previous_centers = (previous[:, :2] + previous[:, 2:]) / 2
    distances = torch.cdist(centers, previous_centers)
    scale = (box_sides(boxes)[:, None] + box_sides(previous)[None, :]) / 2
    return distances / scale.clamp_min(1e-6)


def side_ratio(boxes: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """(K, T) ratio of mean box sides, new over previous."""
    return box_sides(boxes)[:, None] / box_sides(previous)[None, :].clamp_min(1e-6)


class IouTracker:
    """Associates each frame's boxes with the tracks alive in the previous sampled frames.

    Matching is greedy in two rounds, each box and track used at most once per frame:
    1. overlap: box/track pairs by decreasing IoU (against the track's last box) while
       IoU >= `iou_threshold`;
    2. nearness, for what round 1 left unmatched: pairs whose centres lie less than
       `max_center_distance` mean box sides apart and whose sizes differ by at most a factor
       `max_size_ratio`, nearest first. This keeps a face that moves fast relative to the
       sampling rate (more than about half its width per sampled frame) on one track; the size
       condition keeps a small background face from taking over a large foreground one.
    Unmatched boxes start new tracks. A track that finds no box in more than `max_gap`
    consecutive updates ends and is never matched again. The gap is counted in updates
    (sampled frames), not seconds, so it behaves the same whether frames are sampled at 30 fps
    or one per minute.
    """

    def __init__(
        self,
        iou_threshold: float = 0.3,
        max_gap: int = 2,
        max_center_distance: float = 1.5,
        max_size_ratio: float = 2.0,
    ) -> None:
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        if max_gap < 0:
            raise ValueError(f"max_gap must be >= 0, got {max_gap}")
        if max_center_distance < 0:
            raise ValueError(f"max_center_distance must be >= 0, got {max_center_distance}")
        if max_size_ratio < 1.0:
            raise ValueError(f"max_size_ratio must be >= 1, got {max_size_ratio}")
        self.iou_threshold = iou_threshold
        self.max_gap = max_gap
        self.max_center_distance = max_center_distance
        self.max_size_ratio = max_size_ratio
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
        """Box index -> active track: IoU round, then nearness round (see the class docstring)."""
        if not self._active or boxes.shape[0] == 0:
            return {}
        previous = torch.stack([t.last_box for t in self._active])
        overlaps = box_iou(boxes, previous)
        distances = relative_center_distance(boxes, previous)
        ratios = side_ratio(boxes, previous)
        similar_size = (ratios >= 1.0 / self.max_size_ratio) & (ratios <= self.max_size_ratio)
        pairs: dict[int, int] = {}
        _greedy(pairs, overlaps >= self.iou_threshold, overlaps)
        _greedy(pairs, (distances < self.max_center_distance) & similar_size, -distances)
        return {box_index: self._active[track_index] for box_index, track_index in pairs.items()}


def _greedy(pairs: dict[int, int], allowed: torch.Tensor, similarity: torch.Tensor) -> None:
    """Add allowed (box, track) pairs to `pairs`, most similar first, each box and track once."""
    used_tracks = set(pairs.values())
    candidates = torch.nonzero(allowed)
    order = torch.argsort(similarity[candidates[:, 0], candidates[:, 1]], descending=True, stable=True)
    for box_index, track_index in candidates[order].tolist():
        if box_index in pairs or track_index in used_tracks:
            continue
        pairs[box_index] = track_index
        used_tracks.add(track_index)
