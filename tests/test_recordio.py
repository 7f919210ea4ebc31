"""Tests of fskd.data.recordio against the golden vector of docs/formats.md 3.4 and a reference framer."""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import random
import re
import struct

import numpy as np
import pytest
import torch.utils.data

from fskd.data.errors import DataFormatError
from fskd.data.recordio import (
    FaceRecordFile,
    IndexedRecordReader,
    IndexedRecordWriter,
    IRHeader,
    decode_segments,
    encode_record,
    pack,
    unpack,
    write_face_records,
)

MAGIC = bytes.fromhex("0a23d7ce")

GOLDEN_HEXDUMP = """
0000  0a 23 d7 ce 1f 00 00 00 00 00 00 00 00 00 00 00
0010  01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
0020  ff d8 ff e0 41 42 43 00 0a 23 d7 ce 1c 00 00 20
0030  00 00 00 00 00 00 00 00 02 00 00 00 00 00 00 00
0040  00 00 00 00 00 00 00 00 ff d8 ff e0 0a 23 d7 ce
0050  02 00 00 60 ff d9 00 00 0a 23 d7 ce 20 00 00 00
0060  02 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
0070  00 00 00 00 00 00 00 00 00 00 40 40 00 00 80 40
0080  0a 23 d7 ce 20 00 00 00 02 00 00 00 00 00 00 00
0090  03 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
00a0  00 00 80 3f 00 00 40 40
"""
GOLDEN_SHA256 = "cf7042b533cf9dcd6c265004da053fd0d52dcfd9aa39a0241b820aff8a89d77f"
GOLDEN_IDX = "1\t0\n2\t40\n0\t88\n3\t128\n"
GOLDEN_PAYLOAD_1 = bytes.fromhex("ffd8ffe0414243")
GOLDEN_PAYLOAD_2 = bytes.fromhex("ffd8ffe0 0a23d7ce ffd9")


def golden_bytes() -> bytes:
    return bytes.fromhex("".join(line[6:] for line in GOLDEN_HEXDUMP.strip().splitlines()))


def write_golden(folder) -> tuple[str, str]:
    rec, idx = str(folder / "golden.rec"), str(folder / "golden.idx")
    with IndexedRecordWriter(rec, idx) as writer:
        writer.write(1, pack(IRHeader(0, 0.0, 1, 0), GOLDEN_PAYLOAD_1))
        writer.write(2, pack(IRHeader(0, 0.0, 2, 0), GOLDEN_PAYLOAD_2))
        writer.write(0, pack(IRHeader(2, [3, 4], 0, 0), b""))
        writer.write(3, pack(IRHeader(2, [1, 3], 3, 0), b""))
    return rec, idx


def reference_frame(buf: bytes) -> bytes:
    """Straightforward transcription of dmlc's WriteRecord loop (formats.md 3.1), for comparison."""
    out, dptr, split = [], 0, False
    for i in range(0, len(buf) // 4 * 4, 4):
        if buf[i : i + 4] == MAGIC:
            cflag = 2 if split else 1
            out.append(MAGIC + struct.pack("<I", (cflag << 29) | (i - dptr)) + buf[dptr:i])
            dptr, split = i + 4, True
    out.append(MAGIC + struct.pack("<I", ((3 if split else 0) << 29) | (len(buf) - dptr)) + buf[dptr:])
    out.append(b"\0" * ((4 - len(buf) % 4) % 4))
    return b"".join(out)


def tricky_payloads() -> list[bytes]:
    rng = random.Random(1234)
    payloads = [
        b"",
        b"x",
        MAGIC,  # the whole payload is one aligned magic
        MAGIC + MAGIC,  # consecutive magics -> a zero-length middle segment
        b"ab" + MAGIC,  # unaligned in the payload
        b"abc" + MAGIC + b"z",
        b"abcd" + MAGIC,  # aligned magic in the payload's last word
        b"\xff\xd8" + MAGIC + b"\x00\x00" + MAGIC * 3 + b"tail",
        bytes(rng.randrange(256) for _ in range(1001)),
    ]
    for _ in range(20):
        body = bytearray(rng.randrange(256) for _ in range(rng.randrange(0, 300)))
        for _ in range(rng.randrange(0, 5)):
            position = rng.randrange(0, len(body) + 1)
            body[position:position] = MAGIC
        payloads.append(bytes(body))
    return payloads


# ------------------------------------------------------------------------------------------------------------
# golden vector
# ------------------------------------------------------------------------------------------------------------


def test_golden_vector_bytes_and_index(tmp_path):
    rec, idx = write_golden(tmp_path)
    written = open(rec, "rb").read()
    assert len(golden_bytes()) == 168
    assert hashlib.sha256(golden_bytes()).hexdigest() == GOLDEN_SHA256  # the typed hexdump is right
    assert written == golden_bytes()
    assert open(idx, encoding="ascii").read() == GOLDEN_IDX


def test_golden_vector_reads_back(tmp_path):
    rec, idx = tmp_path / "g.rec", tmp_path / "g.idx"
    rec.write_bytes(golden_bytes())
    idx.write_text(GOLDEN_IDX)
    with IndexedRecordReader(rec, idx) as reader:
        assert reader.keys.tolist() == [1, 2, 0, 3]
        assert len(reader) == 4 and 3 in reader and 4 not in reader
        header, payload = unpack(reader.read(2))
        assert header == IRHeader(0, 0.0, 2, 0) and payload == GOLDEN_PAYLOAD_2
        header, payload = unpack(reader.read(0))
        assert (header.flag, header.id, header.id2, payload) == (2, 0, 0, b"")
        assert header.label.dtype == np.float32 and header.label.tolist() == [3.0, 4.0]
        assert decode_segments(golden_bytes()) == [reader.read(key) for key in reader.keys]
    faces = FaceRecordFile(rec, idx)
    assert faces.image_keys.tolist() == [1, 2] and faces.identity_ranges == [(1, 3)]
    assert [faces.read_image(i) for i in range(len(faces))] == [(0, GOLDEN_PAYLOAD_1), (0, GOLDEN_PAYLOAD_2)]
    assert [faces.label_of(i) for i in range(2)] == [0, 0]
    with pytest.raises(IndexError):
        faces.read_image(2)
    faces.close()


# ------------------------------------------------------------------------------------------------------------
# framing and pack/unpack
# ------------------------------------------------------------------------------------------------------------


def test_single_magic_record_is_two_empty_segments():
    assert encode_record(MAGIC) == MAGIC + struct.pack("<I", 1 << 29) + MAGIC + struct.pack("<I", 3 << 29)
    # unaligned magic: not split, one segment padded to 8 bytes
    assert encode_record(b"ab" + MAGIC) == MAGIC + struct.pack("<I", 6) + b"ab" + MAGIC + b"\0\0"


@pytest.mark.parametrize("payload", tricky_payloads(), ids=lambda p: f"len{len(p)}")
def test_framing_matches_reference_and_round_trips(payload):
    for record in (payload, pack(IRHeader(0, 5.0, 9, 0), payload)):
        framed = encode_record(record)
        assert framed == reference_frame(record)
        assert len(framed) % 4 == 0
        assert decode_segments(framed) == [record]


def test_pack_unpack_scalar_and_array_labels():
    record = pack(IRHeader(7, 12.0, 3, 4), b"jpeg")  # a number label forces flag 0
    assert record == struct.pack("<IfQQ", 0, 12.0, 3, 4) + b"jpeg"
    assert unpack(record) == (IRHeader(0, 12.0, 3, 4), b"jpeg")
    assert unpack(pack(IRHeader(0, np.float32(2.5), 1, 0), b""))[0].label == 2.5  # numpy scalar is a number

    record = pack(IRHeader(0, [5, 0.5, -1], 8, 0), b"jpeg")  # an array label sets flag = size
    assert record == struct.pack("<IfQQ", 3, 0.0, 8, 0) + struct.pack("<3f", 5, 0.5, -1) + b"jpeg"
    header, payload = unpack(record)
    assert (header.flag, header.id, payload) == (3, 8, b"jpeg")
    assert header.label.dtype == np.float32 and header.label.tolist() == [5.0, 0.5, -1.0]


def test_unpack_rejects_short_records():
    with pytest.raises(ValueError, match="shorter than the 24-byte IRHeader"):
        unpack(b"\0" * 23)
    with pytest.raises(ValueError, match="too short for its 3 float32 labels"):
        unpack(struct.pack("<IfQQ", 3, 0.0, 1, 0) + b"\0" * 8)


def test_record_of_2_pow_29_bytes_is_rejected(tmp_path):
    huge = memoryview(np.zeros(2**29, dtype=np.uint8))  # calloc'd: pages are never touched
    with pytest.raises(ValueError, match="too large for RecordIO"):
        encode_record(huge)
    with IndexedRecordWriter(tmp_path / "a.rec", tmp_path / "a.idx") as writer:
        with pytest.raises(ValueError, match="too large"):
            writer.write(1, huge)
        writer.write(2, b"ok")
    assert open(tmp_path / "a.idx").read() == "2\t0\n"


# ------------------------------------------------------------------------------------------------------------
# indexed reader / writer
# ------------------------------------------------------------------------------------------------------------


def test_round_trip_random_payloads_keys_out_of_order(tmp_path):
    rng = random.Random(7)
    payloads = tricky_payloads()
    keys = list(range(len(payloads)))
    rng.shuffle(keys)
    expected = {}
    rec, idx = tmp_path / "r.rec", tmp_path / "r.idx"
    with IndexedRecordWriter(rec, idx) as writer:
        for key, payload in zip(keys, payloads, strict=True):
            label = float(key) if key % 2 else [key, 1.0]
            expected[key] = (label, payload)
            writer.write(key, pack(IRHeader(0, label, key, 0), payload))
        with pytest.raises(ValueError, match="duplicate key"):
            writer.write(keys[0], b"again")
    # the .idx offsets are the running sums of the framed sizes
    offsets, position = [], 0
    for key in keys:
        offsets.append(position)
        label, payload = expected[key]
        position += len(reference_frame(pack(IRHeader(0, label, key, 0), payload)))
    assert open(idx).read() == "".join(f"{k}\t{o}\n" for k, o in zip(keys, offsets, strict=True))
    assert os.path.getsize(rec) == position
    with IndexedRecordReader(rec, idx) as reader:
        assert reader.keys.tolist() == keys
        for key in reversed(keys):
            header, payload = unpack(reader.read(key))
            label, want = expected[key]
            assert payload == want and header.id == key
            if isinstance(label, float):
                assert header.flag == 0 and header.label == label
            else:
                assert header.flag == 2 and header.label.tolist() == label
            assert reader.read(key).startswith(reader.read_head(key, 30)[:30])
        with pytest.raises(KeyError, match=re.escape(f"key 999 is not in {idx}")):
            reader.read(999)


def test_reader_is_picklable_and_reopens(tmp_path):
    rec, idx = write_golden(tmp_path)
    reader = IndexedRecordReader(rec, idx)
    first = reader.read(2)
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._fd is None and clone.read(2) == first
    reader.close()
    assert reader.read(1) == pack(IRHeader(0, 0.0, 1, 0), GOLDEN_PAYLOAD_1)  # re-opens after close
    faces = pickle.loads(pickle.dumps(FaceRecordFile(rec, idx)))
    assert faces.read_image(1) == (0, GOLDEN_PAYLOAD_2)
    reader.close()
    clone.close()


class _RecordDataset(torch.utils.data.Dataset):
    """Reads one record per item and reports which process opened the file."""

    def __init__(self, reader: IndexedRecordReader) -> None:
        self.reader = reader

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int) -> tuple[int, int, bytes]:
        data = self.reader.read(self.reader.keys[index])
        return os.getpid(), self.reader._fd_pid, data


def test_dataloader_workers_read_same_bytes(tmp_path):
    rec, idx = tmp_path / "w.rec", tmp_path / "w.idx"
    payloads = tricky_payloads()
    with IndexedRecordWriter(rec, idx) as writer:
        for key, payload in enumerate(payloads):
            writer.write(key, pack(IRHeader(0, float(key), key, 0), payload))
    reader = IndexedRecordReader(rec, idx)
    expected = [reader.read(key) for key in reader.keys]  # the parent has an open handle before forking
    loader = torch.utils.data.DataLoader(
        _RecordDataset(reader), batch_size=None, num_workers=2, multiprocessing_context="fork"
    )
    results = list(loader)
    assert [data for _, _, data in results] == expected
    worker_pids = {pid for pid, _, _ in results}
    assert len(worker_pids) == 2 and os.getpid() not in worker_pids
    assert all(pid == opener for pid, opener, _ in results)  # each worker re-opened its own handle
    reader.close()


# ------------------------------------------------------------------------------------------------------------
# insightface layout
# ------------------------------------------------------------------------------------------------------------


def face_samples() -> list[tuple[int, bytes]]:
    counts = [3, 1, 2, 4]
    return [(cls, f"img-{cls}-{j}".encode() + MAGIC * j) for cls, n in enumerate(counts) for j in range(n)]


@pytest.mark.parametrize("label_style", ["scalar", "array"])
def test_write_face_records_layout(tmp_path, label_style):
    rec, idx = tmp_path / "train.rec", tmp_path / "train.idx"
    samples = face_samples()
    assert write_face_records(rec, idx, iter(samples), label_style=label_style) == (10, 4)
    assert sorted(os.listdir(tmp_path)) == ["train.idx", "train.rec"]  # no temporary files left
    with IndexedRecordReader(rec, idx) as reader:
        assert reader.keys.tolist() == list(range(1, 11)) + [0] + list(range(11, 15))
        header0, payload0 = unpack(reader.read(0))
        assert (header0.flag, header0.label.tolist(), payload0) == (2, [11.0, 15.0], b"")
        header, _ = unpack(reader.read(5))
        if label_style == "scalar":
            assert header == IRHeader(0, 2.0, 5, 0)
        else:
            assert header.flag == 2 and header.label.tolist() == [2.0, 0.0]
        identity, _ = unpack(reader.read(13))
        assert identity.id == 13 and identity.label.tolist() == [5.0, 7.0]
    faces = FaceRecordFile(rec, idx)
    assert len(faces) == 10 and faces.image_keys.tolist() == list(range(1, 11))
    assert faces.identity_ranges == [(1, 4), (4, 5), (5, 7), (7, 11)]
    assert [faces.read_image(i) for i in range(10)] == samples
    assert [faces.label_of(i) for i in range(10)] == [cls for cls, _ in samples]


def test_write_face_records_rejects_ungrouped_classes(tmp_path):
    rec, idx = tmp_path / "t.rec", tmp_path / "t.idx"
    for bad in ([(0, b"a"), (1, b"b"), (0, b"c")], [(1, b"a")], [(0, b"a"), (2, b"b")]):
        with pytest.raises(ValueError, match="grouped by class"):
            write_face_records(rec, idx, bad)
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match="label_style"):
        write_face_records(rec, idx, [], label_style="weird")


def test_face_file_without_header_falls_back_to_all_keys(tmp_path):
    rec, idx = tmp_path / "f.rec", tmp_path / "f.idx"
    with IndexedRecordWriter(rec, idx) as writer:
        writer.write(7, pack(IRHeader(0, 3.0, 7, 0), b"seven"))
        writer.write(2, pack(IRHeader(0, [1, 1], 2, 0), b"two"))
        writer.write(0, pack(IRHeader(0, 0.0, 0, 0), b"zero"))  # key 0 with flag 0 is just an image
    faces = FaceRecordFile(rec, idx)
    assert faces.image_keys.tolist() == [7, 2, 0] and faces.identity_ranges is None
    assert [faces.read_image(i) for i in range(3)] == [(3, b"seven"), (1, b"two"), (0, b"zero")]


@pytest.mark.parametrize("label", [1.5, -1.0, math.nan, math.inf])
def test_face_file_rejects_non_integer_labels(tmp_path, label):
    rec, idx = tmp_path / "bad.rec", tmp_path / "bad.idx"
    with IndexedRecordWriter(rec, idx) as writer:
        writer.write(4, pack(IRHeader(0, label, 4, 0), b"x"))
    faces = FaceRecordFile(rec, idx)
    pattern = re.escape(f"{rec} (record 4)") + ".*not a finite non-negative integer"
    with pytest.raises(DataFormatError, match=pattern):
        faces.read_image(0)
    with pytest.raises(DataFormatError, match=pattern):
        faces.label_of(0)


# ------------------------------------------------------------------------------------------------------------
# corrupt inputs
# ------------------------------------------------------------------------------------------------------------


def corrupt_golden(tmp_path, rec_bytes: bytes | None = None, idx_text: str | None = None) -> tuple[str, str]:
    rec, idx = tmp_path / "c.rec", tmp_path / "c.idx"
    rec.write_bytes(golden_bytes() if rec_bytes is None else rec_bytes)
    idx.write_text(GOLDEN_IDX if idx_text is None else idx_text)
    return str(rec), str(idx)


def test_bad_magic(tmp_path):
    data = bytearray(golden_bytes())
    data[88:92] = b"JUNK"  # record 0 starts at 88
    rec, idx = corrupt_golden(tmp_path, bytes(data))
    reader = IndexedRecordReader(rec, idx)
    assert unpack(reader.read(1))[1] == GOLDEN_PAYLOAD_1  # other records still read
    with pytest.raises(DataFormatError, match=re.escape(f"{rec} (record 0): bad magic")):
        reader.read(0)


def test_truncated_record(tmp_path):
    data = golden_bytes()[:84]  # cut inside record 2's last segment payload ("ff d9")
    rec, idx = corrupt_golden(tmp_path, data, "1\t0\n2\t40\n")
    with pytest.raises(DataFormatError, match=re.escape(f"{rec} (record 2): truncated record")):
        IndexedRecordReader(rec, idx).read(2)
    data = golden_bytes()[:160]  # cut inside record 3's labels
    rec, idx = corrupt_golden(tmp_path, data)
    with pytest.raises(DataFormatError, match=re.escape(f"{rec} (record 3): truncated record")):
        IndexedRecordReader(rec, idx).read(3)


def test_idx_offset_past_end(tmp_path):
    rec, idx = corrupt_golden(tmp_path, idx_text=GOLDEN_IDX + "9\t168\n")
    with pytest.raises(
        DataFormatError, match=re.escape(f"{idx} (record 9): line 5: offset 168 is past the end")
    ):
        IndexedRecordReader(rec, idx)


def test_idx_negative_offset_and_duplicate_key(tmp_path):
    rec, idx = corrupt_golden(tmp_path, idx_text="1\t0\n2\t-40\n")
    with pytest.raises(DataFormatError, match=re.escape(f"{idx} (record 2): line 2: negative offset")):
        IndexedRecordReader(rec, idx)
    rec, idx = corrupt_golden(tmp_path, idx_text="1\t0\n2\t40\n1\t88\n")
    with pytest.raises(DataFormatError, match=re.escape(f"{idx} (record 1): line 3: duplicate key")):
        IndexedRecordReader(rec, idx)


def test_idx_garbage_line(tmp_path):
    rec, idx = corrupt_golden(tmp_path, idx_text="1\t0\n2\t40\nthis is not\tan index\n")
    with pytest.raises(DataFormatError, match=re.escape(idx) + ": line 3: expected 'key<TAB>offset'"):
        IndexedRecordReader(rec, idx)


def test_absurd_segment_length(tmp_path):
    data = bytearray(golden_bytes())
    data[4:8] = struct.pack("<I", 2**29 - 1)  # record 1 claims a 512 MiB payload in a 168-byte file
    rec, idx = corrupt_golden(tmp_path, bytes(data))
    message = re.escape(f"{rec} (record 1): truncated record") + ".*declares 536870911 bytes"
    with pytest.raises(DataFormatError, match=message):
        IndexedRecordReader(rec, idx).read(1)


def test_offset_into_middle_of_record(tmp_path):
    rec, idx = corrupt_golden(tmp_path, idx_text="2\t76\n")  # 76 is record 2's second segment (cflag 3)
    with pytest.raises(
        DataFormatError, match=re.escape(f"{rec} (record 2): offset 76 points into the middle")
    ):
        IndexedRecordReader(rec, idx).read(2)


def test_every_single_byte_corruption_reads_or_raises(tmp_path):
    """Flip each byte of the golden file: reading must return or raise DataFormatError, never hang/crash."""
    original = golden_bytes()
    rec, idx = corrupt_golden(tmp_path)
    outcomes = set()
    for position in range(len(original)):
        data = bytearray(original)
        data[position] ^= 0xFF
        with open(rec, "wb") as file:
            file.write(data)
        with IndexedRecordReader(rec, idx) as reader:
            for key in reader.keys:
                try:
                    reader.read(key)
                    outcomes.add("ok")
                except DataFormatError as error:
                    assert str(rec) in str(error) and f"(record {key})" in str(error)
                    outcomes.add("error")
    assert outcomes == {"ok", "error"}


def _private_kib() -> int:
    rollup = open(f"/proc/{os.getpid()}/smaps_rollup").read().splitlines()
    return sum(int(line.split()[1]) for line in rollup if line.startswith(("Private_Clean", "Private_Dirty")))


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps_rollup") or not hasattr(os, "fork"),
                    reason="needs Linux /proc/<pid>/smaps_rollup and fork")
def test_a_forked_worker_reading_the_whole_index_does_not_copy_it(tmp_path):
    # A loader worker is forked from the main process. With the index in Python ints (a list and a dict),
    # looking up every key writes reference counts into every page of it, so each worker ends up with its own
    # copy (~13 MB here, ~47 MB per worker for CASIA's 494k records). With arrays nothing is written.
    count = 200_000
    (tmp_path / "x.rec").write_bytes(bytes(8 * count))
    (tmp_path / "x.idx").write_text("".join(f"{key}\t{8 * key}\n" for key in range(count)))
    reader = IndexedRecordReader(tmp_path / "x.rec", tmp_path / "x.idx")
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the forked child
        os.close(read_end)
        before = _private_kib()
        total = sum(reader.offset(int(key)) for key in reader.keys)
        assert 0 in reader and count not in reader
        os.write(write_end, f"{_private_kib() - before} {total}".encode())
        os._exit(0)
    os.close(write_end)
    os.waitpid(child, 0)
    grown_kib, total = map(int, os.read(read_end, 100).split())
    os.close(read_end)
    assert total == 8 * count * (count - 1) // 2
    assert grown_kib < 3000, f"the child copied {grown_kib} KiB while reading the index"
