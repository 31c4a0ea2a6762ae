"""Self-blended pseudo-fakes (SBI, Shiohara & Yamasaki, CVPR 2022), written from the paper's description.

A real face crop is turned into a training fake by blending it with a slightly altered copy of
itself: two copies of the same image (source and target) are augmented independently, the source
is also shifted/scaled a little, and the source face is pasted onto the target through a soft,
randomly deformed face mask. The result carries the generic traces of face swapping (blending
boundary, colour and frequency mismatch, landmark misalignment) without any identity change, so a
detector trained on it has to learn those traces.

All image operations work on uint8 RGB `(H, W, 3)` arrays with numpy / scipy.ndimage / Pillow /
skimage; every random choice comes from the `numpy.random.Generator` passed in, so the same seed
gives identical outputs.

Procedure of `self_blend` (one call = one fake):

1. `source` and `target` start as copies of the image. One of them (each with probability 1/2,
   `source_augment_prob`) gets the appearance augmentation, `augment_colour` then
   `augment_frequency`; the other is left exactly as it is (no weaker variant, for simplicity).
2. The source always gets `shift_scale` (a small affine: shift <= 3% of the side, independent
   x/y scale in [0.95, 1.05], edge pixels repeated outside).
3. `blend_mask` builds the mask from the 5 landmarks: landmark face hull (probability 0.75) or
   face ellipse, elastically deformed, dilated or eroded, blurred (soft edge), max 1.
4. The ratio r is 1 with probability 0.25, otherwise U[0.25, 1) (see `SelfBlendConfig`);
   fake = target * (1 - r m) + source * (r m), rounded. Where r m == 0 the fake is the target
   bit for bit; the target is returned as `real`.

`jpeg_compress` is a separate step: the trainer applies it to both classes after blending so that
JPEG artefacts are not a class cue.

Modules: `config.py` (the random ranges), `masks.py` (face masks from the 5 landmarks),
`augment.py` (appearance and geometry changes, JPEG), `blend.py` (`self_blend`), `images.py`
(array helpers they share).

Landmarks are the detector's 5 points in image pixels (x, y): left eye, right eye, nose,
mouth left, mouth right (`pipeline.faces.types.Detections`). `default_landmarks` gives a plausible
layout for a scanner-style crop when a record has none.
"""

from trainer.sbi.augment import augment_colour, augment_frequency, jpeg_compress, shift_scale
from trainer.sbi.blend import SelfBlended, sample_ratio, self_blend
from trainer.sbi.config import SelfBlendConfig
from trainer.sbi.masks import MASK_WORK_SIDE, blend_mask, default_landmarks, face_ellipse, face_hull

__all__ = [
    "MASK_WORK_SIDE",
    "SelfBlendConfig",
    "SelfBlended",
    "augment_colour",
    "augment_frequency",
    "blend_mask",
    "default_landmarks",
    "face_ellipse",
    "face_hull",
    "jpeg_compress",
    "sample_ratio",
    "self_blend",
    "shift_scale",
]
