"""How scores become labels: the only code that maps between logits and P(fake).

The model's logit is log-odds of FAKE. A calibration stores its threshold on the logit scale (the
weights' contract) and may store a temperature T; verdicts compare probabilities:
P(fake) = sigmoid(logit / T) per face, and a video is fake when its aggregated P(fake) >= the threshold
sigmoid(threshold / T). Scanning, calibration and evaluation all go through `Decision`, so they cannot
disagree about a temperature (evaluation once did).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ralf.core.metadata import Calibration

UNCALIBRATED_THRESHOLD = 0.5
UNCALIBRATED_THRESHOLD_SOURCE = "uncalibrated default (0.5)"
# |logit| cap so that sigmoid(threshold / T) stays finite in float arithmetic.
MAX_ABS_LOGIT = 700.0


def sigmoid(value: float) -> float:
    """1 / (1 + e^-x); the equivalent e^x / (1 + e^x) only where e^-x would overflow."""
    if value < -MAX_ABS_LOGIT:
        small = math.exp(value)
        return small / (1.0 + small)
    return 1.0 / (1.0 + math.exp(-value))


def fake_probabilities(logits: Iterable[float] | Any, temperature: float = 1.0) -> list[float]:
    """P(fake) = sigmoid(logit / temperature) per logit, as plain floats.

    `logits`: any iterable of numbers, or a tensor / array (anything with `tolist`, read in one copy).
    A temperature of 1.0 leaves the model's probabilities as they are.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    values = logits.tolist() if hasattr(logits, "tolist") else logits
    return [sigmoid(float(logit) / temperature) for logit in values]


def _probability_logit(probability: float) -> float:
    clipped = min(max(probability, 1e-300), 1.0 - 1e-16)
    return max(-MAX_ABS_LOGIT, min(MAX_ABS_LOGIT, math.log(clipped) - math.log1p(-clipped)))


@dataclass(frozen=True)
class Decision:
    """P(fake) = sigmoid(logit / temperature); fake when the (aggregated) P(fake) >= `threshold`."""

    threshold: float  # on the P(fake) scale of verdicts
    source: str
    temperature: float = 1.0

    @staticmethod
    def probability_threshold(logit_threshold: float, temperature: float | None = None) -> float:
        """A threshold stored on the logit moved to the P(fake) scale: sigmoid(threshold / T)."""
        return sigmoid(logit_threshold / (temperature or 1.0))

    @staticmethod
    def logit_threshold(probability: float, below: float, temperature: float | None = None) -> float:
        """The logit threshold t to store so that below < sigmoid(t / T) <= probability.

        A plain logit of `probability` can round to a verdict threshold just above it and flip the
        boundary sample, so t is nudged down until it cannot. ValueError when no such t exists.
        """
        scale = temperature or 1.0
        threshold = scale * _probability_logit(probability)
        for _ in range(64):
            if Decision.probability_threshold(threshold, scale) <= probability:
                break
            threshold = math.nextafter(threshold, -math.inf)
        if not below < Decision.probability_threshold(threshold, scale) <= probability:
            raise ValueError(f"cannot represent the threshold {probability!r} on the logit scale")
        return threshold

    @classmethod
    def from_calibration(cls, calibration: Calibration | None) -> Decision:
        """The decision a weights file's calibration makes (uncalibrated: P(fake) >= 0.5, no temperature)."""
        if calibration is None:
            return cls(UNCALIBRATED_THRESHOLD, UNCALIBRATED_THRESHOLD_SOURCE)
        temperature = calibration.temperature or 1.0
        details = [calibration.method]
        if calibration.target_fpr is not None:
            details.append(f"target FPR {calibration.target_fpr:g}")
        details.append(f"{calibration.level} level")
        details.append(f"{calibration.num_real} real / {calibration.num_fake} fake")
        details.append(calibration.date)
        threshold = cls.probability_threshold(calibration.threshold, temperature)
        return cls(threshold, f"calibrated ({', '.join(details)})", temperature)

    def probabilities(self, logits: Iterable[float] | Any) -> list[float]:
        """P(fake) of each logit (see `fake_probabilities`)."""
        return fake_probabilities(logits, self.temperature)

    @staticmethod
    def logit_of(probability: float) -> float:
        """The (capped) logit whose sigmoid is `probability`, e.g. to fit a temperature on video scores."""
        return _probability_logit(probability)
