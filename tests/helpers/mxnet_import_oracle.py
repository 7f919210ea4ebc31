"""Running the mxnet oracle of the MXNet import tests (tests/helpers/mxnet_import_script.py, in the mxnet 1.9.1
interpreter of .ci/mxnet-venv.sh), and writing the committed expected embeddings.

The expected embeddings (tests/data/mobilefacenet_orl_embeddings.npy, with .json saying which files, pixels,
model and mxnet produced them) let tests/test_mxnet_import.py check the import against real mxnet's output
wherever the real data is present, even without the mxnet interpreter. Regenerate them (from the repository root,
with the real data in ../shared/data/real-faces) with:

    .venv/bin/python -m tests.helpers.mxnet_import_oracle
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from tests.helpers.real_faces import (
    MOBILEFACENET_PREFIX,
    ORL_FACES,
    PAD_COLUMNS,
    REAL_FACES,
    REPO,
    missing_real_faces,
    orl_batch,
    sha256,
)

SCRIPT = Path(__file__).with_name("mxnet_import_script.py")
EXPECTED = REPO / "tests" / "data" / "mobilefacenet_orl_embeddings.npy"
EXPECTED_INFO = EXPECTED.with_suffix(".json")
#: The stage ends of the MobileFaceNet graph that fskd returns as its four feature maps.
MOBILEFACENET_STAGE_NODES = ("conv_2_dw_relu", "_plus3", "_plus9", "_plus11")


def oracle_interpreter() -> str | None:
    """``FSKD_MXNET_PYTHON`` (must be executable) or ``<repo>/.venv-mxnet/bin/python``; None without either."""
    configured = os.environ.get("FSKD_MXNET_PYTHON")
    if configured:
        if not os.access(configured, os.X_OK):
            raise RuntimeError(f"FSKD_MXNET_PYTHON={configured} is not an executable interpreter")
        return configured
    default = REPO / ".venv-mxnet" / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
    return str(default) if default.exists() else None


def run_oracle(python: str, job: dict, folder: Path) -> dict:
    """Run the oracle script on ``job``; its JSON result (RuntimeError with its stderr if it fails)."""
    job_path = folder / "job.json"
    job_path.write_text(json.dumps(job))
    completed = subprocess.run([python, "-I", str(SCRIPT), str(job_path)], capture_output=True, text=True,
                               timeout=600, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"mxnet oracle failed (exit {completed.returncode}):\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def oracle_orl_embeddings(python: str, folder: Path) -> tuple[np.ndarray, dict[str, np.ndarray], str]:
    """Real mxnet's MobileFaceNet embeddings of the ORL faces (picture rule of real_faces), its stage maps and
    the mxnet version."""
    images = folder / "orl.npy"
    np.save(images, orl_batch().astype(np.float32))
    out = folder / "orl_mxnet.npz"
    result = run_oracle(python, {"embed": [{"prefix": str(MOBILEFACENET_PREFIX), "epoch": 0, "images": str(images),
                                            "out": str(out), "internals": list(MOBILEFACENET_STAGE_NODES)}]}, folder)
    with np.load(out) as outputs:
        embedding = outputs["embedding"]
        stages = {name: outputs[name] for name in MOBILEFACENET_STAGE_NODES}
    return embedding, stages, result["mxnet_version"]


def expected_info(mxnet_version: str) -> dict:
    symbol = MOBILEFACENET_PREFIX.with_name("model-symbol.json")
    params = MOBILEFACENET_PREFIX.with_name("model-0000.params")
    return {
        "about": "Embeddings of 20 real ORL faces by the insightface MobileFaceNet, computed by real mxnet; "
                 "tests/test_mxnet_import.py compares fskd's import against them when mxnet is absent.",
        "data_root": "../shared/data/real-faces (from the repository root; not part of the project)",
        "model": {"symbol": symbol.relative_to(REAL_FACES).as_posix(), "symbol_sha256": sha256(symbol),
                  "params": params.relative_to(REAL_FACES).as_posix(), "params_sha256": sha256(params),
                  "output": "fc1 (128-d, BatchNorm after the FC), not L2-normalised"},
        "faces": [{"file": name, "sha256": sha256(REAL_FACES / name)} for name in ORL_FACES],
        "pixels": f"92x112 grey PGM -> grey replicated to R, G, B; {PAD_COLUMNS} black (0) columns added on the left "
                  f"and on the right -> 112x112; fed to mxnet as float32 NCHW RGB 0..255 (the graph normalises)",
        "array": "float32, shape (20, 128), one row per face in the order of 'faces'",
        "mxnet": f"mxnet {mxnet_version}, mx.mod.Module bound for_training=False, forward is_train=False, CPU",
        "written_by": ".venv/bin/python -m tests.helpers.mxnet_import_oracle",
    }


def main() -> int:
    reason = missing_real_faces()
    python = oracle_interpreter()
    if reason or python is None:
        print(reason or "no mxnet interpreter: run .ci/mxnet-venv.sh or set FSKD_MXNET_PYTHON", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as folder:
        embedding, _, version = oracle_orl_embeddings(python, Path(folder))
    EXPECTED.parent.mkdir(parents=True, exist_ok=True)
    np.save(EXPECTED, embedding.astype(np.float32))
    EXPECTED_INFO.write_text(json.dumps(expected_info(version), indent=1) + "\n")
    print(f"wrote {EXPECTED.relative_to(REPO)} {embedding.shape} and {EXPECTED_INFO.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
