"""Error rates per group of people (gender, age band, race, ...), so moderators see whether real
people of one group get flagged more often than others.

Group labels come from a CSV file (`video_id` plus one column per attribute) or from UTKFace's file
names (`<age>_<gender>_<race>_<date>.jpg`: gender 0 male / 1 female; race 0 White, 1 Black,
2 Asian, 3 Indian, 4 Others).
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from trainer.data import CropRecord

UTKFACE_GENDERS = {"0": "male", "1": "female"}
UTKFACE_RACES = {"0": "White", "1": "Black", "2": "Asian", "3": "Indian", "4": "Others"}
AGE_BANDS = ((0, 12, "0-12"), (13, 19, "13-19"), (20, 39, "20-39"), (40, 59, "40-59"), (60, 200, "60+"))
_UTKFACE_NAME = re.compile(r"^(\d{1,3})_([01])_([0-4])_")

GroupLabels = Callable[[CropRecord], dict[str, str] | None]


def age_band(age: int) -> str:
    return next(name for low, high, name in AGE_BANDS if low <= age <= high)


def utkface_labels(record: CropRecord) -> dict[str, str] | None:
    """gender, age band and race from a UTKFace file name (None when the name does not carry them)."""
    name = PurePosixPath(record.video_id.removesuffix("#sbi")).name
    found = _UTKFACE_NAME.match(name)
    if found is None:
        return None
    age, gender, race = found.groups()
    return {"gender": UTKFACE_GENDERS[gender], "age": age_band(int(age)), "race": UTKFACE_RACES[race]}


def csv_labels(path: Path) -> GroupLabels:
    """Labels from a CSV with a `video_id` column and one column per attribute."""
    with Path(path).open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "video_id" not in reader.fieldnames:
            raise ValueError(f"{path} needs a header with a video_id column and one column per attribute")
        table = {row["video_id"]: {k: v for k, v in row.items() if k != "video_id" and v} for row in reader}
    return lambda record: table.get(record.video_id.removesuffix("#sbi"))


def group_labels(source: str) -> GroupLabels:
    """`utkface` or the path of a CSV file."""
    if source == "utkface":
        return utkface_labels
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"--groups takes 'utkface' or a CSV file; {source} is neither")
    return csv_labels(path)


@dataclass(frozen=True)
class GroupRate:
    attribute: str
    group: str
    num_real: int
    false_positives: int
    fpr: float | None  # share of this group's real faces flagged fake
    num_fake: int
    tpr: float | None  # share of this group's fakes caught

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def rates_by_group(
    records: Sequence[CropRecord], probabilities: np.ndarray, threshold: float, labels: GroupLabels
) -> list[GroupRate]:
    """FPR (and TPR where the group has fakes) at `threshold` on P(fake), per attribute and group.
    Records without labels are left out; a group's share of unlabelled records is not guessed."""
    flagged = np.asarray(probabilities) >= threshold
    counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])  # real, fp, fake, tp
    for record, is_flagged in zip(records, flagged):
        for attribute, group in (labels(record) or {}).items():
            slot = counts[(attribute, group)]
            if record.is_fake:
                slot[2] += 1
                slot[3] += int(is_flagged)
            else:
                slot[0] += 1
                slot[1] += int(is_flagged)
    return [
        GroupRate(attribute, group, real, fp, fp / real if real else None, fake, tp / fake if fake else None)
        for (attribute, group), (real, fp, fake, tp) in sorted(counts.items())
    ]
