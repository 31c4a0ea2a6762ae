"""Decode only what sparse sampling needs (PyAV): a plan from the packets, made before decoding.

At the default 2 frames/s a 25-30 fps video keeps one frame in 12-15, yet every frame used to be
decoded. Two kinds of frame can be left undecoded without changing a single sampled pixel:

- **non-reference frames** (H.264 `nal_ref_idc = 0`, HEVC sub-layer non-reference pictures: most
  B-frames) that are not sampled: nothing else is predicted from them, so the decoder skips them
  (`AVCodecContext.skip_frame = NONREF`, set per packet: the frame threads copy it when a packet is
  submitted). A sampled frame's packet is always sent with `DEFAULT`.
- **whole GOPs** (a keyframe up to the next) without a sampled frame, when the next GOP has no
  leading pictures (frames shown before its keyframe, which may refer back into the skipped GOP):
  their packets are not sent; the decoder is drained and flushed, as after a seek, and starts again
  at the next keyframe. This pays only when keyframes are closer than the sampling interval (short
  GOPs, `--max-frames` over long videos, all-intra MJPEG, where every frame is a keyframe).

Which frames are sampled depends only on (index, timestamp) in presentation order, and both come
from the packets: a demux pass (no decoding; milliseconds) reads every packet's pts and keyframe
flag, sorts the pts into presentation order, and runs the same `FrameSelector` over them. The plan
is made only when it must agree with decoding everything: a codec whose per-frame skipping was
verified (`SKIP_CODECS`, by test: bit-identical sampled frames, same indices and timestamps), every
packet with a distinct pts. While decoding, every frame must arrive with a pts of the plan, in
order; anything else (or damage: a rejected packet, a frame flagged corrupt) abandons the plan and
the video is decoded again from its start without skipping, emitting only frames not yet emitted.

What differs from decoding everything: damage inside frames that were not decoded is not seen, so
`corrupt_frames` counts only decoded frames (damage seen while skipping turns skipping off, so
every decoded frame is then counted), and sampled frames emitted before the damage surfaced keep the
pixels of the skipping pass: on damaged data FFmpeg's error concealment depends on which frames were
decoded before, so they may differ from a full decode. VP8/VP9 (a packet may hold an invisible frame, so packets
and shown frames need not pair up), AV1 and others are decoded in full.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from fractions import Fraction

import av

from pipeline.decode.sampling import FrameSelector

logger = logging.getLogger(__name__)

# Codecs whose decoders honour skip_frame=NONREF frame by frame and pair one packet with one shown
# frame in MP4/MKV/MOV/AVI: inter codecs with B-frames, and MJPEG (every frame a keyframe).
SKIP_CODECS = frozenset({"h264", "hevc", "mjpeg"})
# Codecs without inter prediction: skipping a frame needs no drain and flush of the decoder.
INTRA_CODECS = frozenset({"mjpeg"})


class PlanMismatch(RuntimeError):
    """The decoder delivered something the plan did not foresee; decode everything instead."""


@dataclass
class DecodePlan:
    """What to send to the decoder and what each delivered frame is.

    position: pts -> (index in presentation order, timestamp in seconds), for every frame;
    sampled: pts of the frames the selector keeps;
    dropped: pts of packets not sent at all (GOPs without a sampled frame);
    restarts: pts of keyframes where decoding resumes after dropped packets (drain and flush first,
      unless the codec is intra-only).
    """

    position: dict[int, tuple[int, float]]
    sampled: set[int]
    dropped: set[int] = field(default_factory=set)
    restarts: set[int] = field(default_factory=set)
    intra_only: bool = False

    @property
    def frames(self) -> int:
        return len(self.position)

    def counts(self) -> tuple[int, int]:
        """(frames whose packets are not sent, frames that may be skipped as non-reference)."""
        return len(self.dropped), self.frames - len(self.dropped) - len(self.sampled)


@dataclass
class _Packet:
    pts: int
    keyframe: bool


def plan_decode(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    selector: FrameSelector,
    origin: int | None,
    time_base: Fraction,
) -> DecodePlan | None:
    """The plan for `stream` (demuxed to its end; seek back or reopen before decoding), or None when
    skipping could change what is sampled. `origin`: the stream's start pts (None: the first pts)."""
    codec = stream.codec_context.name
    if codec not in SKIP_CODECS:
        return None
    packets: list[_Packet] = []
    for packet in container.demux(stream):
        if not packet.size:
            continue
        if packet.pts is None:
            return None
        packets.append(_Packet(int(packet.pts), bool(packet.is_keyframe)))
    if not packets:
        return None
    order = sorted(p.pts for p in packets)
    if len(set(order)) != len(order):
        return None  # repeated timestamps: decoding estimates times frame by frame
    start = order[0] if origin is None else origin
    position: dict[int, tuple[int, float]] = {}
    sampled: set[int] = set()
    for index, pts in enumerate(order):
        timestamp = float((pts - start) * time_base)
        position[pts] = (index, timestamp)
        if selector.keep(index, timestamp):
            sampled.add(pts)
    if len(sampled) == len(order):
        return None  # every frame is sampled: nothing to skip
    plan = DecodePlan(position, sampled, intra_only=codec in INTRA_CODECS)
    _drop_unneeded_gops(packets, plan)
    return plan


def _drop_unneeded_gops(packets: list[_Packet], plan: DecodePlan) -> None:
    """Mark the packets of GOPs (in decode order, from a keyframe to the next) that hold no sampled
    frame and that no later needed GOP depends on (leading pictures), and where decoding restarts."""
    starts = [i for i, p in enumerate(packets) if p.keyframe]
    if not starts or starts[0] != 0:
        starts = [0, *[s for s in starts if s != 0]]
    bounds = list(zip(starts, [*starts[1:], len(packets)], strict=True))
    needed = [any(p.pts in plan.sampled for p in packets[a:b]) for a, b in bounds]
    # A GOP with leading pictures (shown before its keyframe) may predict them from the GOP before.
    for g in range(len(bounds) - 1, 0, -1):
        a, b = bounds[g]
        key_pts = packets[a].pts
        if needed[g] and any(p.pts < key_pts for p in packets[a + 1 : b]):
            needed[g - 1] = True
    sent_before = False
    for (a, b), keep in zip(bounds, needed, strict=True):
        if not keep:
            plan.dropped.update(p.pts for p in packets[a:b])
            continue
        if sent_before and a > 0 and packets[a - 1].pts in plan.dropped and packets[a].keyframe:
            plan.restarts.add(packets[a].pts)
        sent_before = True


__all__ = ["INTRA_CODECS", "SKIP_CODECS", "DecodePlan", "PlanMismatch", "plan_decode"]
