"""Procedural synthetic identity faces, written in the insightface layout (``train.rec``/``.idx``, ``*.bin``).

No real face-recognition data can be installed here, so tests, the demo and the CPU benchmark use faces drawn
by this package and packed by the project's own writers: the code paths that read CASIA-WebFace and LFW are
the ones exercised. Design, knobs and calibration: ``docs/synthetic-faces.md``.

* `fskd.data.synthetic.config`: `SynthConfig`, the difficulty knobs, and the palettes they select from;
* `fskd.data.synthetic.faces`: one image, a pure function of ``(seed, identity, sample, config)``;
* `fskd.data.synthetic.dataset`: `generate_dataset`, the training records and verification sets;
* `fskd.data.synthetic.tinyface`: `write_tinyface_layout`, probes and gallery in TinyFace's folders.

Bytes are reproducible for a given numpy, Pillow and libjpeg; numpy does not promise identical random
streams across major versions.
"""

from fskd.data.synthetic.config import HAIR_PALETTE, HAIRSTYLES, SKIN_PALETTE, SynthConfig
from fskd.data.synthetic.dataset import (
    CASIA_IDENTITIES,
    CASIA_IMAGES,
    CASIA_PAIRS,
    META_FILE,
    VERIFICATION_ID_BASE,
    VERIFICATION_SETS,
    casia_image_counts,
    dataset_matches,
    generate_dataset,
)
from fskd.data.synthetic.faces import (
    FACE_CENTRE,
    GLASSES_COLOURS,
    IRIS_PALETTE,
    LEFT_EYE,
    MOUTH_Y,
    RIGHT_EYE,
    TEMPLATE_SIZE,
    IdentityParams,
    encode_jpeg,
    identity_params,
    render_face,
    render_face_jpeg,
)
from fskd.data.synthetic.tinyface import TINYFACE_ID_BASE, write_tinyface_layout

__all__ = [
    "CASIA_IDENTITIES",
    "CASIA_IMAGES",
    "CASIA_PAIRS",
    "casia_image_counts",
    "dataset_matches",
    "FACE_CENTRE",
    "GLASSES_COLOURS",
    "HAIRSTYLES",
    "HAIR_PALETTE",
    "IRIS_PALETTE",
    "LEFT_EYE",
    "META_FILE",
    "MOUTH_Y",
    "RIGHT_EYE",
    "SKIN_PALETTE",
    "TEMPLATE_SIZE",
    "TINYFACE_ID_BASE",
    "VERIFICATION_ID_BASE",
    "VERIFICATION_SETS",
    "IdentityParams",
    "SynthConfig",
    "encode_jpeg",
    "generate_dataset",
    "identity_params",
    "render_face",
    "render_face_jpeg",
    "write_tinyface_layout",
]
