"""mxnet oracle for tests/test_mxnet_oracle.py, run by the mxnet 1.9.1 interpreter (see .ci/mxnet-venv.sh).

It must not import fskd: its environment holds only mxnet and numpy<1.24. Usage:

    python mxnet_oracle_script.py JOB.json

JOB.json may hold:
- "write": {"rec", "idx", "records": [{"key", "flag", "label", "id", "id2", "payload" (hex)}]}
  (label: a number or a list) -> written with mx.recordio.MXIndexedRecordIO + mx.recordio.pack, in list order;
- "read": [{"name", "rec", "idx"}] -> every record read with mxnet and unpacked, in .idx order;
- "read_bins": [path] -> each .bin loaded with pickle as insightface does (default load, then
  encoding='bytes');
- "write_numpy_bin": {"path", "images" (hex list), "issame"} -> a protocol-2 pickle holding a numpy 1.x
  bool array.

The result is printed as JSON on the last line of stdout.
"""

from __future__ import annotations

import json
import pickle
import sys

import mxnet as mx
import numpy as np


def write_records(job: dict) -> None:
    writer = mx.recordio.MXIndexedRecordIO(job["idx"], job["rec"], "w")
    for record in job["records"]:
        header = mx.recordio.IRHeader(record["flag"], record["label"], record["id"], record["id2"])
        writer.write_idx(record["key"], mx.recordio.pack(header, bytes.fromhex(record["payload"])))
    writer.close()


def read_records(job: dict) -> dict:
    reader = mx.recordio.MXIndexedRecordIO(job["idx"], job["rec"], "r")
    records = []
    for key in reader.keys:
        header, payload = mx.recordio.unpack(reader.read_idx(key))
        label = header.label.tolist() if header.flag > 0 else float(header.label)
        records.append(
            {
                "key": key,
                "flag": header.flag,
                "label": label,
                "id": header.id,
                "id2": header.id2,
                "payload": payload.hex(),
            }
        )
    # the sequential reader must see the same records in file order
    sequential = mx.recordio.MXRecordIO(job["rec"], "r")
    sequential_count = 0
    while sequential.read() is not None:
        sequential_count += 1
    sequential.close()
    reader.close()
    return {
        "keys": [int(key) for key in reader.keys],
        "records": records,
        "sequential_count": sequential_count,
    }


def read_bin(path: str) -> dict:
    with open(path, "rb") as file:
        try:
            pickle.load(file)
            default_error = None
        except UnicodeDecodeError as error:
            default_error = type(error).__name__
    with open(path, "rb") as file:
        bins, issame = pickle.load(file, encoding="bytes")
    return {
        "default_load_error": default_error,
        "images": [bytes(image).hex() for image in bins],
        "issame": [bool(value) for value in issame],
        "issame_type": type(issame).__name__,
    }


def write_numpy_bin(job: dict) -> None:
    images = [bytes.fromhex(image) for image in job["images"]]
    with open(job["path"], "wb") as file:
        pickle.dump((images, np.array(job["issame"], dtype=bool)), file, protocol=2)


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as file:
        job = json.load(file)
    result: dict = {"mxnet_version": mx.__version__, "numpy_version": np.__version__}
    if "write" in job:
        write_records(job["write"])
    if "write_numpy_bin" in job:
        write_numpy_bin(job["write_numpy_bin"])
    result["read"] = {target["name"]: read_records(target) for target in job.get("read", [])}
    result["read_bins"] = {path: read_bin(path) for path in job.get("read_bins", [])}
    sys.stdout.write("\n" + json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
