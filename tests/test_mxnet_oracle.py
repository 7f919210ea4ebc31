"""Cross-checks of fskd.data.recordio / binfile against mxnet 1.9.1 itself (optional oracle).

mxnet needs numpy<1.24, so it lives in its own venv (``.ci/mxnet-venv.sh``) and runs only in a
subprocess (tests/helpers/mxnet_oracle_script.py). The interpreter comes from ``FSKD_MXNET_PYTHON`` or
``<repo>/.venv-mxnet/bin/python``; without either the tests are skipped.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fskd.data.binfile import load_bin, save_bin
from fskd.data.recordio import (
    FaceRecordFile,
    IndexedRecordReader,
    IndexedRecordWriter,
    IRHeader,
    pack,
    unpack,
    write_face_records,
)

pytestmark = pytest.mark.mxnet

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).parent / "helpers" / "mxnet_oracle_script.py"
MAGIC = bytes.fromhex("0a23d7ce")


def oracle_python() -> str:
    configured = os.environ.get("FSKD_MXNET_PYTHON")
    if configured:
        if not os.access(configured, os.X_OK):
            pytest.fail(f"FSKD_MXNET_PYTHON={configured} is not an executable interpreter")
        return configured
    default = REPO / ".venv-mxnet" / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
    if default.exists():
        return str(default)
    pytest.skip("no mxnet oracle interpreter: run .ci/mxnet-venv.sh or set FSKD_MXNET_PYTHON")


def oracle_records() -> list[dict]:
    """Records in face2rec2 order: images 1..5, header 0, identities 6..7; payloads with embedded magics."""
    rng = random.Random(2024)
    noise = bytes(rng.randrange(256) for _ in range(5000))
    payloads = [
        b"\xff\xd8\xff\xe0" + MAGIC + b"\xff\xd9",  # aligned magic after the 24-byte header
        b"\xff\xd8" + MAGIC + b"abc",  # unaligned
        b"",
        noise[:1000] + MAGIC * 3 + noise[1000:2001] + MAGIC,  # several magics, one in the last word
        noise,
    ]
    classes = [0, 0, 0, 1, 1]
    records = []
    for key, (cls, payload) in enumerate(zip(classes, payloads, strict=True), start=1):
        # odd keys: scalar labels (with a flag that pack must overwrite), even keys: [class, aligned] arrays
        label = float(cls) if key % 2 else [float(cls), 1.0]
        records.append({"key": key, "flag": 5, "label": label, "id": key, "id2": 0, "payload": payload.hex()})
    records.append({"key": 0, "flag": 2, "label": [6.0, 8.0], "id": 0, "id2": 0, "payload": ""})
    records.append({"key": 6, "flag": 2, "label": [1.0, 4.0], "id": 6, "id2": 0, "payload": ""})
    records.append({"key": 7, "flag": 2, "label": [4.0, 6.0], "id": 7, "id2": 0, "payload": ""})
    return records


FACE_SAMPLES = [(0, b"\xff\xd8a" + MAGIC), (0, b"\xff\xd8" + MAGIC * 2), (1, b""), (2, b"\xff\xd8xyz")]
BIN_IMAGES = [b"\xff\xd8\xff\xe0" + bytes([i]) * (100 * i) for i in range(4)]
BIN_ISSAME = [True, False]


@pytest.fixture(scope="module")
def oracle(tmp_path_factory) -> dict:
    """Write fskd files, run the mxnet script once over them, and return paths plus its JSON result."""
    python = oracle_python()
    folder = tmp_path_factory.mktemp("mxnet_oracle")
    paths = {name: str(folder / name) for name in ("mx.rec", "mx.idx", "fskd.rec", "fskd.idx")}
    paths.update(
        {name: str(folder / name) for name in ("face.rec", "face.idx", "py2.bin", "py3.bin", "np1.bin")}
    )
    records = oracle_records()
    with IndexedRecordWriter(paths["fskd.rec"], paths["fskd.idx"]) as writer:
        for record in records:
            header = IRHeader(record["flag"], record["label"], record["id"], record["id2"])
            writer.write(record["key"], pack(header, bytes.fromhex(record["payload"])))
    write_face_records(paths["face.rec"], paths["face.idx"], FACE_SAMPLES, label_style="array")
    save_bin(paths["py2.bin"], BIN_IMAGES, BIN_ISSAME, style="py2")
    save_bin(paths["py3.bin"], BIN_IMAGES, BIN_ISSAME, style="py3")
    job = {
        "write": {"rec": paths["mx.rec"], "idx": paths["mx.idx"], "records": records},
        "read": [
            {"name": "fskd", "rec": paths["fskd.rec"], "idx": paths["fskd.idx"]},
            {"name": "face", "rec": paths["face.rec"], "idx": paths["face.idx"]},
        ],
        "read_bins": [paths["py2.bin"], paths["py3.bin"]],
        "write_numpy_bin": {
            "path": paths["np1.bin"],
            "images": [i.hex() for i in BIN_IMAGES],
            "issame": BIN_ISSAME,
        },
    }
    job_path = folder / "job.json"
    job_path.write_text(json.dumps(job))
    completed = subprocess.run(
        [python, "-I", str(SCRIPT), str(job_path)], capture_output=True, text=True, timeout=300, check=False
    )
    if completed.returncode != 0:
        pytest.fail(f"mxnet oracle failed (exit {completed.returncode}):\n{completed.stderr[-4000:]}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["mxnet_version"] == "1.9.1"
    return {"paths": paths, "records": records, "result": result}


def test_writer_bytes_identical_to_mxnet(oracle):
    paths = oracle["paths"]
    assert Path(paths["fskd.rec"]).read_bytes() == Path(paths["mx.rec"]).read_bytes()
    assert Path(paths["fskd.idx"]).read_text() == Path(paths["mx.idx"]).read_text()


def test_fskd_reads_mxnet_file(oracle):
    paths, records = oracle["paths"], oracle["records"]
    with IndexedRecordReader(paths["mx.rec"], paths["mx.idx"]) as reader:
        assert reader.keys.tolist() == [record["key"] for record in records]
        for record in records:
            header, payload = unpack(reader.read(record["key"]))
            assert payload == bytes.fromhex(record["payload"])
            assert (header.id, header.id2) == (record["id"], record["id2"])
            if isinstance(record["label"], list):
                assert header.flag == len(record["label"]) and header.label.tolist() == record["label"]
            else:
                assert header.flag == 0 and header.label == record["label"]
    faces = FaceRecordFile(paths["mx.rec"], paths["mx.idx"])
    assert faces.image_keys.tolist() == [1, 2, 3, 4, 5] and faces.identity_ranges == [(1, 4), (4, 6)]
    assert [faces.read_image(i) for i in range(5)] == [
        (int(r["label"] if not isinstance(r["label"], list) else r["label"][0]), bytes.fromhex(r["payload"]))
        for r in records[:5]
    ]


def test_mxnet_reads_fskd_files(oracle):
    records = oracle["records"]
    seen = oracle["result"]["read"]["fskd"]
    assert seen["keys"] == [record["key"] for record in records]
    assert seen["sequential_count"] == len(records)
    for got, record in zip(seen["records"], records, strict=True):
        flag = len(record["label"]) if isinstance(record["label"], list) else 0
        assert got == {**record, "flag": flag}


def test_mxnet_reads_fskd_face_layout(oracle):
    seen = oracle["result"]["read"]["face"]
    assert seen["keys"] == [1, 2, 3, 4, 0, 5, 6, 7]
    by_key = {record["key"]: record for record in seen["records"]}
    for key, (cls, payload) in enumerate(FACE_SAMPLES, start=1):
        assert by_key[key] == {
            "key": key,
            "flag": 2,
            "label": [cls, 0.0],
            "id": key,
            "id2": 0,
            "payload": payload.hex(),
        }
    assert by_key[0]["label"] == [5.0, 8.0] and by_key[0]["flag"] == 2
    assert [by_key[key]["label"] for key in (5, 6, 7)] == [[1.0, 3.0], [3.0, 4.0], [4.0, 5.0]]


@pytest.mark.parametrize("name", ["py2.bin", "py3.bin"])
def test_oracle_python_loads_fskd_bin(oracle, name):
    seen = oracle["result"]["read_bins"][oracle["paths"][name]]
    assert seen["images"] == [image.hex() for image in BIN_IMAGES]
    assert seen["issame"] == BIN_ISSAME and seen["issame_type"] == "list"
    # only the Python-2-style stream trips Python 3's default ASCII decoding, like insightface's files
    assert seen["default_load_error"] == ("UnicodeDecodeError" if name == "py2.bin" else None)


def test_fskd_loads_numpy1_bin(oracle):
    images, issame = load_bin(oracle["paths"]["np1.bin"])  # pickled by numpy<1.24: numpy.core globals
    assert images == BIN_IMAGES and issame.dtype == np.bool_ and issame.tolist() == BIN_ISSAME
