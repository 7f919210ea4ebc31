"""mxnet oracle for tests/test_mxnet_import.py, run by the mxnet 1.9.1 interpreter (see .ci/mxnet-venv.sh).

It must not import fskd: its environment holds only mxnet and numpy<1.24. Usage:

    python mxnet_import_script.py JOB.json

JOB.json may hold:
- "save_ndarrays": {"named", "unnamed", "expected"} -> one array of every dtype mxnet 1.9.1's Python API saves,
  written with mx.nd.save as a dict (``named``) and as a list (``unnamed``); the same arrays as numpy in the
  ``expected`` .npz (keys = the names);
- "build_lresnet": {"prefix", "units", "filters", "embedding", "seed"} -> an insightface LResNet-IR symbol
  (fresnet.py: version_input 1, unit v3, output E, PReLU, with the in-graph (x - 127.5) * 0.0078125) with random
  weights and BatchNorm statistics, saved with mx.model.save_checkpoint(prefix, 0);
- "embed": [{"prefix", "epoch", "images", "out", "internals"}] -> the checkpoint bound with mx.mod.Module in
  inference mode (for_training=False, is_train=False) on the float32 NCHW 0..255 RGB batch in the ``images`` .npy;
  the output and the named internal outputs are saved to the ``out`` .npz (keys "embedding" and the names).

The result is printed as JSON on the last line of stdout.
"""

from __future__ import annotations

import json
import sys

import mxnet as mx
import numpy as np

DTYPES = ("float32", "float64", "float16", "uint8", "int32", "int8", "int64", "bool")


def save_ndarrays(job: dict) -> dict:
    arrays = {}
    for index, dtype in enumerate(DTYPES):
        shape = (2, 3, index + 1) if index % 2 else (index + 2,)
        values = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape) * (-1) ** index + index
        arrays[f"arg:array_{dtype}"] = (values % 2 == 1) if dtype == "bool" else values.astype(dtype)
    mx.nd.save(job["named"], {name: mx.nd.array(value, dtype=value.dtype) for name, value in arrays.items()})
    mx.nd.save(job["unnamed"], [mx.nd.array(value, dtype=value.dtype) for value in arrays.values()])
    np.savez(job["expected"], **arrays)
    return {"names": list(arrays)}


def _conv(data, filters, kernel, stride, pad, name):
    return mx.sym.Convolution(data=data, num_filter=filters, kernel=kernel, stride=stride, pad=pad, no_bias=True,
                              workspace=256, name=name)


def _bn(data, name, fix_gamma=False):
    return mx.sym.BatchNorm(data=data, fix_gamma=fix_gamma, eps=2e-5, momentum=0.9, name=name)


def _unit_v3(data, filters, stride, dim_match, name):
    bn1 = _bn(data, name + "_bn1")
    conv1 = _conv(bn1, filters, (3, 3), (1, 1), (1, 1), name + "_conv1")
    bn2 = _bn(conv1, name + "_bn2")
    act1 = mx.sym.LeakyReLU(data=bn2, act_type="prelu", name=name + "_relu1")
    conv2 = _conv(act1, filters, (3, 3), stride, (1, 1), name + "_conv2")
    bn3 = _bn(conv2, name + "_bn3")
    if dim_match:
        shortcut = data
    else:
        conv1sc = _conv(data, filters, (1, 1), stride, (0, 0), name + "_conv1sc")
        shortcut = _bn(conv1sc, name + "_sc")
    return bn3 + shortcut


def lresnet_symbol(units, filters, embedding):
    """insightface fresnet.get_symbol with version_input=1, version_output='E', version_unit=3, prelu."""
    data = mx.sym.Variable(name="data")
    body = (data - 127.5) * 0.0078125
    body = _conv(body, filters[0], (3, 3), (1, 1), (1, 1), "conv0")
    body = _bn(body, "bn0")
    body = mx.sym.LeakyReLU(data=body, act_type="prelu", name="relu0")
    for stage, count in enumerate(units):
        body = _unit_v3(body, filters[stage + 1], (2, 2), False, f"stage{stage + 1}_unit1")
        for unit in range(count - 1):
            body = _unit_v3(body, filters[stage + 1], (1, 1), True, f"stage{stage + 1}_unit{unit + 2}")
    body = _bn(body, "bn1")
    body = mx.sym.Dropout(data=body, p=0.4)
    fc1 = mx.sym.FullyConnected(data=body, num_hidden=embedding, name="pre_fc1")
    return _bn(fc1, "fc1", fix_gamma=True)


def build_lresnet(job: dict) -> dict:
    symbol = lresnet_symbol(job["units"], job["filters"], job["embedding"])
    rng = np.random.default_rng(job["seed"])
    shapes, _, aux_shapes = symbol.infer_shape(data=(1, 3, 112, 112))
    args, aux = {}, {}
    for name, shape in zip(symbol.list_arguments(), shapes, strict=True):
        if name == "data":
            continue
        if name.endswith("_weight"):
            fan_in = int(np.prod(shape[1:]))
            value = rng.normal(0, np.sqrt(2.0 / fan_in), shape)
        elif name.endswith("_gamma"):
            value = rng.uniform(0.5, 1.5, shape) if "relu" not in name else rng.uniform(0.0, 0.5, shape)
        else:  # beta, bias
            value = rng.normal(0, 0.1, shape)
        args[name] = mx.nd.array(value.astype(np.float32))
    for name, shape in zip(symbol.list_auxiliary_states(), aux_shapes, strict=True):
        value = rng.normal(0, 0.1, shape) if name.endswith("_mean") else rng.uniform(0.5, 2.0, shape)
        aux[name] = mx.nd.array(value.astype(np.float32))
    mx.model.save_checkpoint(job["prefix"], 0, symbol, args, aux)
    return {"arguments": len(args), "aux": len(aux)}


def embed(job: dict) -> dict:
    symbol, args, aux = mx.model.load_checkpoint(job["prefix"], job.get("epoch", 0))
    images = np.load(job["images"]).astype(np.float32)
    internals = job.get("internals", [])
    if internals:
        every = symbol.get_internals()
        symbol = mx.sym.Group([symbol] + [every[name + "_output"] for name in internals])
    module = mx.mod.Module(symbol=symbol, context=mx.cpu(), label_names=None)
    module.bind(data_shapes=[("data", images.shape)], for_training=False)
    module.set_params(args, aux, allow_missing=False, allow_extra=True)
    module.forward(mx.io.DataBatch([mx.nd.array(images)]), is_train=False)
    outputs = [output.asnumpy() for output in module.get_outputs()]
    np.savez(job["out"], embedding=outputs[0], **dict(zip(internals, outputs[1:], strict=True)))
    return {"shape": list(outputs[0].shape)}


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as file:
        job = json.load(file)
    result: dict = {"mxnet_version": mx.__version__, "numpy_version": np.__version__}
    if "save_ndarrays" in job:
        result["save_ndarrays"] = save_ndarrays(job["save_ndarrays"])
    if "build_lresnet" in job:
        result["build_lresnet"] = build_lresnet(job["build_lresnet"])
    result["embed"] = [embed(item) for item in job.get("embed", [])]
    sys.stdout.write("\n" + json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
