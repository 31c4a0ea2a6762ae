"""Locate and load the MTCNN weights shipped by the PyPI package `mtcnn` 1.0.0.

The package stores each network as `mtcnn/assets/weights/{pnet,rnet,onet}.lz4`, a joblib pickle of
the Keras models' `get_weights()` arrays. Importing `mtcnn` would import TensorFlow, so the files are
found with `importlib.util.find_spec` and read with `joblib.load`.

joblib.load unpickles, which may run code. That is acceptable here only because each file's sha256 is
checked first against the digest of the file shipped in mtcnn 1.0.0: nothing but those exact
package files is ever unpickled, and no user-supplied path reaches this loader.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Literal

import numpy as np

from pipeline.faces.types import FaceDetectorError

NetName = Literal["pnet", "rnet", "onet"]

# sha256 of the weight files in the `mtcnn` 1.0.0 wheel.
WEIGHTS_SHA256: dict[NetName, str] = {
    "pnet": "ea6b0c3e685ebee3165326ad6484acc95f2ef78f1c94fbf40a55704fa989f7b5",
    "rnet": "cb00e6460f3c98b0bfafaba3c0a0ded4bdf6e62cee7174d969e8670d7e757fee",
    "onet": "94f6ea2f4cf985275ee958cdd762d17b6009348a4fb9d8c6be39ba73ffd22ca3",
}


def weights_dir() -> Path:
    """The installed package's `assets/weights` folder, found without importing the package."""
    spec = importlib.util.find_spec("mtcnn")
    if spec is None or not spec.submodule_search_locations:
        raise FaceDetectorError(
            "MTCNN weights not found: the PyPI package 'mtcnn' (1.0.0) is not installed; "
            "install it with `pip install mtcnn==1.0.0` (only its weight files are used)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "assets" / "weights"


def load_net_arrays(name: NetName) -> list[np.ndarray]:
    """The Keras weight arrays of one network, after checking the file is the packaged one."""
    path = weights_dir() / f"{name}.lz4"
    if not path.is_file():
        raise FaceDetectorError(f"MTCNN weights file missing: {path} (reinstall the 'mtcnn' 1.0.0 package)")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != WEIGHTS_SHA256[name]:
        raise FaceDetectorError(
            f"refusing to load {path}: sha256 {digest} is not that of mtcnn 1.0.0's {name}.lz4 "
            "(the file is unpickled, so only the known file is accepted)"
        )
    import joblib

    arrays = joblib.load(path)
    if not isinstance(arrays, list) or not all(isinstance(a, np.ndarray) for a in arrays):
        raise FaceDetectorError(f"{path} does not hold a list of arrays")
    return arrays
