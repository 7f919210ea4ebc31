"""MXNet model-zoo import: the pure-Python ``.params`` reader (fskd.data.mxnet_params) and the symbol importer
(fskd.models.importers.mxnet), checked against real mxnet.

Three levels, so that the check against mxnet never silently disappears:

* crafted files (no data, no mxnet): the reader's format and its refusal of corrupt or hostile files;
* the real insightface MobileFaceNet and 20 real ORL faces in ``../shared/data/real-faces`` (skipped, saying why,
  when absent): the import against the embeddings real mxnet wrote (tests/data/mobilefacenet_orl_embeddings.npy,
  see tests/helpers/mxnet_import_oracle.py), cosine >= 0.9999 per face;
* with the mxnet 1.9.1 interpreter too (``FSKD_MXNET_PYTHON`` or ``.venv-mxnet``, marker ``mxnet``): the same faces
  through real mxnet now, its stage maps, every dtype mxnet saves, and an insightface LResNet-IR graph built and
  run by mxnet.
"""

from __future__ import annotations

import json
import pickle
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from fskd.data.errors import DataFormatError
from fskd.data.mxnet_params import (
    DTYPES,
    LIST_MAGIC,
    NDARRAY_V1_MAGIC,
    NDARRAY_V2_MAGIC,
    load_params,
    read_ndarray_file,
)
from fskd.models import MobileFaceNet, create_backbone, load_backbone
from fskd.models.importers.mxnet import import_mxnet
from fskd.models.loading import imported_checkpoint
from tests.helpers.mxnet_import_oracle import (
    EXPECTED,
    EXPECTED_INFO,
    MOBILEFACENET_STAGE_NODES,
    oracle_interpreter,
    oracle_orl_embeddings,
    run_oracle,
)
from tests.helpers.real_faces import (
    MOBILEFACENET_PREFIX,
    ORL_FACES,
    REAL_FACES,
    as_fskd_input,
    cosines,
    missing_real_faces,
    orl_batch,
    sha256,
)

FLAGS = {dtype: flag for flag, dtype in DTYPES.items()}
MIN_COSINE = 0.9999


# -- a writer of NDArray files, for crafting them ------------------------------------------------------------------
def ndarray_record(array: np.ndarray, version: str = "v2", **override: int) -> bytes:
    """One array as ``NDArray::Save`` writes it (``v2``), or in the V1 / pre-V1 ("legacy") layouts mxnet still
    loads. ``override`` replaces a header field: magic, storage, ndim, device, dtype."""
    array = np.ascontiguousarray(array)
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    shape = array.shape
    ndim = override.get("ndim", len(shape))
    if version == "legacy":
        header = struct.pack("<I", ndim) + struct.pack(f"<{len(shape)}I", *shape)
    else:
        magic = override.get("magic", NDARRAY_V2_MAGIC if version == "v2" else NDARRAY_V1_MAGIC)
        header = struct.pack("<I", magic)
        if version == "v2":
            header += struct.pack("<i", override.get("storage", 0))
        header += struct.pack("<i", ndim) + struct.pack(f"<{len(shape)}q", *shape)
    header += struct.pack("<ii", override.get("device", 1), 0)
    header += struct.pack("<i", override.get("dtype", FLAGS[np.dtype(dtype)]))
    return header + array.astype(dtype).tobytes()


def ndarray_file(records: list[bytes], names: list[str] | None = None, count: int | None = None,
                 name_count: int | None = None, magic: int = LIST_MAGIC) -> bytes:
    names = [] if names is None else names
    data = struct.pack("<QQQ", magic, 0, len(records) if count is None else count) + b"".join(records)
    data += struct.pack("<Q", len(names) if name_count is None else name_count)
    for name in names:
        raw = name.encode()
        data += struct.pack("<Q", len(raw)) + raw
    return data


SAMPLES = {
    "arg:conv_weight": np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2) / 7,
    "arg:half": np.array([1.5, -2.0, 65504.0], dtype=np.float16),
    "aux:bn_moving_var": np.linspace(0.5, 2.0, 5),
    "arg:index": np.array([[1, -2], [3, 2**40]], dtype=np.int64),
    "arg:bytes": np.array([0, 7, 255], dtype=np.uint8),
    "arg:flags": np.array([True, False, True]),
    "arg:int": np.array([-(2**31), 2**31 - 1], dtype=np.int32),
    "arg:small": np.array([-128, 127], dtype=np.int8),
}


@pytest.mark.parametrize("version", ["v2", "v1", "legacy"])
def test_reads_every_dtype_in_every_ndarray_layout(tmp_path: Path, version: str) -> None:
    path = tmp_path / "model-0000.params"
    path.write_bytes(ndarray_file([ndarray_record(a, version) for a in SAMPLES.values()], list(SAMPLES)))
    params = load_params(path)
    assert list(params) == list(SAMPLES)
    for name, expected in SAMPLES.items():
        assert params[name].dtype == expected.dtype and params[name].shape == expected.shape
        np.testing.assert_array_equal(params[name], expected)
        assert params[name].flags.writeable and params[name].flags.aligned


def test_unnamed_list_reads_but_is_not_a_parameter_file(tmp_path: Path) -> None:
    path = tmp_path / "list.nd"
    path.write_bytes(ndarray_file([ndarray_record(a) for a in SAMPLES.values()]))
    arrays, names = read_ndarray_file(path)
    assert names == [] and len(arrays) == len(SAMPLES)
    with pytest.raises(DataFormatError, match="no names"):
        load_params(path)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="absent-0000.params"):
        load_params(tmp_path / "absent-0000.params")


GOOD = ndarray_record(np.ones((2, 2), np.float32))
BAD_FILES = {
    "empty file": (b"", "header: truncated"),
    "pickle renamed .params": (pickle.dumps({"arg:w": [1.0, 2.0]}, protocol=2), "not an MXNet NDArray file"),
    "pickle protocol 5": (pickle.dumps({"arg:w": 1}, protocol=5), "not an MXNet NDArray file"),
    "wrong list magic": (ndarray_file([GOOD], ["arg:w"], magic=0x113), "magic 0x0000000000000113"),
    "absurd array count": (ndarray_file([GOOD], ["arg:w"], count=2**62), "claims 4,611,686,018,427,387,904 arrays"),
    "truncated data": (ndarray_file([GOOD, GOOD], ["arg:a", "arg:b"])[:-40], "array 1 of 2: truncated"),
    "absurd shape": (ndarray_file([ndarray_record(np.ones((2, 2), np.float32))[:-16].replace(
        struct.pack("<qq", 2, 2), struct.pack("<qq", 2**40, 2**40))], ["arg:w"]), "array 0 of 1: truncated or corrupt"),
    "absurd ndim": (ndarray_file([ndarray_record(np.ones(2, np.float32), ndim=1000)], ["arg:w"]), "1000 dimensions"),
    "negative dimension": (ndarray_file([GOOD.replace(struct.pack("<qq", 2, 2), struct.pack("<qq", 2, -2))],
                                        ["arg:w"]), "dimension <= 0"),
    "none array": (ndarray_file([struct.pack("<Iii", NDARRAY_V2_MAGIC, 0, -1)], ["arg:w"]), "empty (uninitialised)"),
    "unknown dtype": (ndarray_file([ndarray_record(np.ones(2, np.float32), dtype=99)], ["arg:w"]),
                      "array 0 of 1: unsupported dtype flag 99"),
    "bfloat16": (ndarray_file([ndarray_record(np.ones(2, np.float32), dtype=12)], ["arg:w"]),
                 "unsupported dtype flag 12"),
    "sparse storage": (ndarray_file([GOOD, ndarray_record(np.ones(2, np.float32), storage=1)], ["arg:a", "arg:b"]),
                       "array 1 of 2: storage type 1"),
    "unknown device": (ndarray_file([ndarray_record(np.ones(2, np.float32), device=9)], ["arg:w"]),
                       "unknown device type 9"),
    "unknown array magic": (ndarray_file([ndarray_record(np.ones(2, np.float32), magic=0xDEADBEEF)], ["arg:w"]),
                            "unknown NDArray magic 0xDEADBEEF"),
    "names for some arrays": (ndarray_file([GOOD, GOOD], ["arg:a", "arg:b"], name_count=1), "1 names for 2 arrays"),
    "absurd name count": (ndarray_file([GOOD], ["arg:w"], name_count=2**40), "names: 1,099,511,627,776 names for 1"),
    "absurd name length": (ndarray_file([GOOD], ["arg:w"]).replace(struct.pack("<Q", 5) + b"arg:w",
                                                                   struct.pack("<Q", 2**50) + b"arg:w"),
                           "name of array 0: truncated"),
    "name not utf-8": (ndarray_file([GOOD], ["arg:w"]).replace(b"arg:w", b"arg:\xff"), "not UTF-8"),
    "trailing bytes": (ndarray_file([GOOD], ["arg:w"]) + b"\x00" * 3, "3 unexpected bytes after the names"),
    "duplicate names": (ndarray_file([GOOD, GOOD], ["arg:w", "arg:w"]), "array 1: the name 'arg:w' appears twice"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_corrupt_or_hostile_files_fail_naming_file_and_array(tmp_path: Path, case: str) -> None:
    data, message = BAD_FILES[case]
    path = tmp_path / "model-0000.params"
    path.write_bytes(data)
    tracemalloc.start()
    try:
        with pytest.raises(DataFormatError) as error:
            load_params(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(path) in str(error.value) and message in str(error.value), str(error.value)
    assert peak < 1_000_000, f"{case}: {peak:,} bytes allocated for a {len(data)}-byte file"


# -- the real MobileFaceNet (../shared/data/real-faces) ------------------------------------------------------------
needs_real_faces = pytest.mark.skipif(missing_real_faces() is not None, reason=str(missing_real_faces()))


@needs_real_faces
def test_reads_the_real_mobilefacenet_params() -> None:
    params = load_params(MOBILEFACENET_PREFIX.with_name("model-0000.params"))
    assert len(params) == 284 and sum(a.size for a in params.values()) == 1_022_848
    assert all(a.dtype == np.float32 for a in params.values())
    assert {name.split(":")[0] for name in params} == {"arg", "aux"}
    assert params["arg:fc1_weight"].shape == (128, 512) and params["arg:conv_1_conv2d_weight"].shape == (64, 3, 3, 3)


@pytest.fixture(scope="module")
def imported() -> tuple[torch.nn.Module, dict, dict]:
    reason = missing_real_faces()
    if reason:
        pytest.skip(reason)
    return import_mxnet(str(MOBILEFACENET_PREFIX), 0)


@pytest.fixture(scope="module")
def orl_embeddings(imported: tuple[torch.nn.Module, dict, dict]) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """fskd's embeddings and stage maps of the 20 ORL faces, fed the fskd way."""
    backbone = imported[0]
    with torch.no_grad():
        out = backbone(torch.from_numpy(as_fskd_input(orl_batch())))
    return out.embedding.numpy(), tuple(f.numpy() for f in out.features)


def test_import_rebuilds_the_real_mobilefacenet(imported: tuple[torch.nn.Module, dict, dict]) -> None:
    backbone, architecture, source = imported
    assert architecture == {"backbone": "mobilefacenet", "mode": "ir", "neck": "gdc", "width": 1.0,
                            "embedding_size": 128, "dropout": 0.0}
    assert isinstance(backbone, MobileFaceNet) and not backbone.training
    assert source["format"] == "mxnet" and source["output"] == "fc1" and source["unused_params"] == []
    assert "0.99609375" in source["input"]
    params = load_params(MOBILEFACENET_PREFIX.with_name("model-0000.params"))
    # the input convention is folded into the first convolution: 127.5 * 0.0078125
    np.testing.assert_array_equal(backbone.conv_1.conv.weight.detach().numpy(),
                                  params["arg:conv_1_conv2d_weight"] * np.float32(0.99609375))
    np.testing.assert_array_equal(backbone.res_4[5].conv_dw.conv.weight.detach().numpy(),
                                  params["arg:res_4_block5_conv_dw_conv2d_weight"])
    np.testing.assert_array_equal(backbone.pre_fc1.weight.detach().numpy(), params["arg:fc1_weight"])
    assert torch.equal(backbone.fc1.weight, torch.ones(128))  # fix_gamma=True


def test_import_matches_the_embeddings_real_mxnet_wrote(orl_embeddings: tuple[np.ndarray, tuple]) -> None:
    """Runs wherever the real data is, mxnet or not: the committed oracle output of the same 20 faces."""
    info = json.loads(EXPECTED_INFO.read_text())
    assert [face["file"] for face in info["faces"]] == list(ORL_FACES)
    changed = [face["file"] for face in info["faces"] if sha256(REAL_FACES / face["file"]) != face["sha256"]]
    changed += [info["model"][k] for k in ("symbol", "params")
                if sha256(REAL_FACES / info["model"][k]) != info["model"][f"{k}_sha256"]]
    assert not changed, f"the real data differs from what {EXPECTED.name} was computed from: {changed}"
    expected = np.load(EXPECTED)
    assert expected.shape == (20, 128) and expected.dtype == np.float32
    embedding, _ = orl_embeddings
    similarity = cosines(embedding, expected)
    assert similarity.min() >= MIN_COSINE, similarity
    np.testing.assert_allclose(embedding, expected, rtol=0, atol=1e-4 * np.abs(expected).max())


def test_imported_checkpoint_reloads_as_a_teacher(imported: tuple[torch.nn.Module, dict, dict],
                                                  tmp_path: Path) -> None:
    backbone, architecture, source = imported
    path = tmp_path / "mobilefacenet.ckpt"
    torch.save(imported_checkpoint(backbone, architecture, source), path)
    reloaded = load_backbone(path, expected={"backbone": "mobilefacenet"})
    images = torch.rand(2, 3, 112, 112, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        assert torch.equal(reloaded(images).embedding, backbone(images).embedding)


# -- layouts the importer refuses (the real symbol, edited) --------------------------------------------------------
def edited_prefix(tmp_path: Path, edit: callable, params: dict[str, np.ndarray] | None = None) -> str:
    """A copy of the real symbol with ``edit(nodes)`` applied, beside a link to the real params (or ``params``
    written out): the real files themselves are never copied."""
    symbol = json.loads(MOBILEFACENET_PREFIX.with_name("model-symbol.json").read_text())
    edit(symbol["nodes"])
    prefix = tmp_path / "model"
    Path(f"{prefix}-symbol.json").write_text(json.dumps(symbol))
    target = Path(f"{prefix}-0000.params")
    if params is None:
        target.symlink_to(MOBILEFACENET_PREFIX.with_name("model-0000.params").resolve())
    else:
        target.write_bytes(ndarray_file([ndarray_record(a) for a in params.values()], list(params)))
    return str(prefix)


def _node(nodes: list[dict], name: str) -> dict:
    return next(node for node in nodes if node["name"] == name)


def _set_op(name: str, op: str, attrs: dict) -> callable:
    def edit(nodes: list[dict]) -> None:
        _node(nodes, name).update(op=op, attrs=attrs)
    return edit


def _set_attr(name: str, key: str, value: str) -> callable:
    def edit(nodes: list[dict]) -> None:
        _node(nodes, name)["attrs"][key] = value
    return edit


def _skip_residual(nodes: list[dict]) -> None:
    # _plus1 adds res_3_block1's output to _plus0; make it add block 1's output to itself
    plus = _node(nodes, "_plus1")
    plus["inputs"][1] = list(plus["inputs"][0])


REFUSED = {
    "unsupported op": (_set_op("res_3_block1_conv_sep_relu", "Activation", {"act_type": "relu"}),
                       "node 80 'res_3_block1_conv_sep_relu' (Activation): unsupported op 'Activation'"),
    "leaky relu instead of prelu": (_set_attr("res_4_block0_conv_dw_relu", "act_type", "leaky"),
                                    "'res_4_block0_conv_dw_relu' (LeakyReLU): act_type=leaky"),
    "other stride": (_set_attr("res_3_block2_conv_dw_conv2d", "stride", "(2, 2)"),
                     "'res_3_block2_conv_dw_conv2d' (Convolution): stride=(2, 2), but res_3.2.conv_dw.conv"),
    "dilated convolution": (_set_attr("conv_6sep_conv2d", "dilate", "(2, 2)"), "'conv_6sep_conv2d' (Convolution): "
                                                                               "dilate=(2, 2)"),
    "other residual wiring": (_skip_residual, "'_plus1' (elemwise_add): its input(s)"),
    "other input normalisation": (_set_attr("_minusscalar0", "scalar", "127.0"), "cannot be folded exactly"),
    "BN over another axis": (_set_attr("conv_1_batchnorm", "axis", "3"), "'conv_1_batchnorm' (BatchNorm): axis=3"),
    "unreadable attribute": (_set_attr("dconv_34_conv_dw_conv2d", "kernel", "(3; 3)"),
                             "'dconv_34_conv_dw_conv2d' (Convolution): attribute kernel='(3; 3)' is not a tuple"),
    "NaN BN eps": (_set_attr("fc1", "eps", "nan"), "'fc1' (BatchNorm): attribute eps='nan' is not a finite number"),
    "other filter count": (_set_op("dconv_34_conv_sep_conv2d", "Convolution", {
        "kernel": "(1, 1)", "num_filter": "128", "no_bias": "True"}),
        "'dconv_34_conv_sep_conv2d' (Convolution): num_filter=128, but dconv_34.conv_sep.conv of the fskd "
        "MobileFaceNet-y1 (4, 6, 2) has 256"),
}


@needs_real_faces
@pytest.mark.parametrize("case", list(REFUSED))
def test_unsupported_nodes_are_named(tmp_path: Path, case: str) -> None:
    edit, message = REFUSED[case]
    with pytest.raises(ValueError) as error:
        import_mxnet(edited_prefix(tmp_path, edit))
    assert message in str(error.value), str(error.value)


@needs_real_faces
def test_a_missing_parameter_is_named(tmp_path: Path) -> None:
    params = load_params(MOBILEFACENET_PREFIX.with_name("model-0000.params"))
    del params["aux:res_5_block1_conv_dw_batchnorm_moving_var"]
    with pytest.raises(ValueError, match="no parameter 'res_5_block1_conv_dw_batchnorm_moving_var' "
                                         r"\(moving_var of node \d+ 'res_5_block1_conv_dw_batchnorm'"):
        import_mxnet(edited_prefix(tmp_path, lambda nodes: None, params))


@needs_real_faces
def test_a_parameter_of_another_shape_is_named(tmp_path: Path) -> None:
    params = load_params(MOBILEFACENET_PREFIX.with_name("model-0000.params"))
    params["arg:pre_fc1_bias"] = np.zeros(64, np.float32)
    with pytest.raises(ValueError, match=r"'pre_fc1' \(FullyConnected\): bias 'pre_fc1_bias' has shape \(64,\)"):
        import_mxnet(edited_prefix(tmp_path, lambda nodes: None, params))


def test_a_symbol_of_another_network_is_refused(tmp_path: Path) -> None:
    symbol = {"nodes": [{"op": "null", "name": "data", "inputs": []},
                        {"op": "Pooling", "name": "pool0", "attrs": {"kernel": "(2, 2)"}, "inputs": [[0, 0, 0]]},
                        {"op": "FullyConnected", "name": "fc", "attrs": {"num_hidden": "4"}, "inputs": [[1, 0, 0]]}],
              "heads": [[2, 0, 0]]}
    (tmp_path / "net-symbol.json").write_text(json.dumps(symbol))
    with pytest.raises(ValueError, match="neither a MobileFaceNet .* first unsupported node is node 1 'pool0'"):
        import_mxnet(str(tmp_path / "net"))
    (tmp_path / "bad-symbol.json").write_text('{"nodes": [{"op": "null", "name": "data", "inputs": [[3, 0]]}]}')
    with pytest.raises(DataFormatError, match="node 0 'data': input"):
        import_mxnet(str(tmp_path / "bad"))


# -- against real mxnet ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mxnet_python() -> str:
    python = oracle_interpreter()
    if python is None:
        pytest.skip("no mxnet oracle interpreter: run .ci/mxnet-venv.sh or set FSKD_MXNET_PYTHON (the committed "
                    "embeddings are still checked by test_import_matches_the_embeddings_real_mxnet_wrote)")
    return python


@pytest.mark.mxnet
def test_import_matches_real_mxnet_on_real_faces(mxnet_python: str, orl_embeddings: tuple, tmp_path: Path) -> None:
    reference, stages, version = oracle_orl_embeddings(mxnet_python, tmp_path)
    assert version == "1.9.1"
    embedding, features = orl_embeddings
    similarity = cosines(embedding, reference)
    assert similarity.min() >= MIN_COSINE, similarity
    # the four F-SKD stage maps are the graph's stage ends
    for name, feature in zip(MOBILEFACENET_STAGE_NODES, features, strict=True):
        np.testing.assert_allclose(feature, stages[name], rtol=0, atol=1e-4 * np.abs(stages[name]).max())
    # and the committed embeddings are what this mxnet computes
    np.testing.assert_allclose(np.load(EXPECTED), reference, rtol=0, atol=1e-5 * np.abs(reference).max())


@pytest.mark.mxnet
def test_reads_every_dtype_mxnet_saves(mxnet_python: str, tmp_path: Path) -> None:
    job = {"save_ndarrays": {"named": str(tmp_path / "named.params"), "unnamed": str(tmp_path / "unnamed.nd"),
                             "expected": str(tmp_path / "expected.npz")}}
    run_oracle(mxnet_python, job, tmp_path)
    params = load_params(tmp_path / "named.params")
    arrays, names = read_ndarray_file(tmp_path / "unnamed.nd")
    with np.load(tmp_path / "expected.npz") as expected:
        assert list(params) == expected.files and names == [] and len(arrays) == len(DTYPES)
        assert {a.dtype for a in params.values()} == set(DTYPES.values())
        for index, name in enumerate(expected.files):
            assert params[name].dtype == expected[name].dtype
            np.testing.assert_array_equal(params[name], expected[name])
            np.testing.assert_array_equal(arrays[index], expected[name])


@pytest.mark.mxnet
def test_imports_an_lresnet_ir_graph_mxnet_built_and_ran(mxnet_python: str, tmp_path: Path) -> None:
    """insightface's LResNet-IR (fresnet unit v3, output E, eps 2e-5 BNs) at 1/8 width with random weights and
    statistics: imported onto IResNet-18 with the fc neck, it gives mxnet's embeddings."""
    prefix = str(tmp_path / "lresnet")
    images = tmp_path / "images.npy"
    rng = np.random.default_rng(0)
    np.save(images, rng.integers(0, 256, (6, 3, 112, 112)).astype(np.float32))
    run_oracle(mxnet_python, {
        "build_lresnet": {"prefix": prefix, "units": [2, 2, 2, 2], "filters": [8, 8, 16, 32, 64], "embedding": 32,
                          "seed": 0},
        "embed": [{"prefix": prefix, "images": str(images), "out": str(tmp_path / "out.npz")}]}, tmp_path)
    backbone, architecture, source = import_mxnet(prefix)
    assert architecture == {"backbone": "iresnet18", "mode": "ir", "neck": "fc", "width": 0.125,
                            "embedding_size": 32, "dropout": 0.4}
    rebuilt = create_backbone(architecture["backbone"], **{k: v for k, v in architecture.items() if k != "backbone"})
    assert rebuilt.state_dict().keys() == backbone.state_dict().keys()
    with torch.no_grad():
        embedding = backbone(torch.from_numpy(as_fskd_input(np.load(images)))).embedding.numpy()
    reference = np.load(tmp_path / "out.npz")["embedding"]
    similarity = cosines(embedding, reference)
    assert similarity.min() >= MIN_COSINE, similarity
    np.testing.assert_allclose(embedding, reference, rtol=0, atol=1e-4 * np.abs(reference).max())


@pytest.mark.slow
def test_the_imported_network_teaches_an_fskd_student(imported: tuple[torch.nn.Module, dict, dict], tiny_root: Path,
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real MobileFaceNet, imported, is a --model.teacher_ckpt: an F-SKD MobileFaceNet student trains from it."""
    from fskd.commands.lightning import lightning_main
    from tests.conftest import CONFIGS, FAST

    backbone, architecture, source = imported
    teacher_ckpt = tmp_path / "mobilefacenet_insightface.ckpt"
    torch.save(imported_checkpoint(backbone, architecture, source), teacher_ckpt)
    monkeypatch.chdir(tmp_path)
    cli = lightning_main(["fit", "--config", str(CONFIGS / "synthetic.yaml"), "--config",
                          str(CONFIGS / "method" / "fskd.yaml"), "--model.backbone", "mobilefacenet", "--model.neck",
                          "gdc", "--model.width", "1.0", "--model.teacher_ckpt", str(teacher_ckpt),
                          "--data.root", str(tiny_root), "--trainer.max_steps", "2",
                          "--trainer.limit_val_batches", "0", "--trainer.default_root_dir", str(tmp_path),
                          "--run", "student", *FAST])
    distill = float(cli.trainer.callback_metrics["train/distill"])
    assert np.isfinite(distill) and distill > 0
    # the teacher inside the student's system is the imported network, frozen
    torch.testing.assert_close(cli.model.teacher.state_dict(), backbone.state_dict())


@needs_real_faces
def test_the_picture_rule_is_fskds_own_for_grey_92x112_faces() -> None:
    """The committed embeddings' pixels are what fskd's loader (`decode_face`, docs/formats.md section 5) makes of
    the same PGM files: grey replicated, 10 black columns each side, unscaled."""
    from fskd.data.images import decode_face

    for name in ORL_FACES[:4]:
        path = REAL_FACES / name
        np.testing.assert_array_equal(decode_face(path.read_bytes(), path).numpy(), orl_batch((name,))[0])
