"""``fskd export``: a checkpoint's backbone to ONNX and/or TorchScript (``image -> embedding``), parity-checked."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from fskd.models.export import DYNAMO_NATIVE_OPSET, EXPORTERS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fskd export", description="Export a checkpoint's backbone for "
                                     "deployment: input 'image' (B,3,112,112) in [-1,1], output 'embedding' "
                                     "(B,E).")
    parser.add_argument("--ckpt", required=True, help="TeacherModule/DistillModule checkpoint")
    parser.add_argument("--onnx", default=None, help="ONNX file to write")
    parser.add_argument("--torchscript", default=None, help="TorchScript file to write")
    parser.add_argument("--opset", type=int, default=DYNAMO_NATIVE_OPSET,
                        help=f"ONNX opset (>= {DYNAMO_NATIVE_OPSET}: torch.export-based exporter; below: "
                        "legacy)")
    parser.add_argument("--exporter", choices=EXPORTERS, default="auto")
    parser.add_argument("--static-batch", action="store_true", help="fix the ONNX batch size to 2")
    parser.add_argument("--no-check", action="store_true", help="skip the parity check against PyTorch")
    return parser


def main(argv: Sequence[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.onnx and not args.torchscript:
        parser.error("give --onnx and/or --torchscript")
    import torch

    from fskd.models.export import export_onnx, export_torchscript, onnx_parity
    from fskd.models.loading import load_backbone

    backbone = load_backbone(args.ckpt, allow_student=True)
    if args.onnx:
        path = export_onnx(backbone, args.onnx, opset=args.opset, dynamic_batch=not args.static_batch,
                           exporter=args.exporter)
        print(f"wrote {path} (opset {args.opset})")
        if not args.no_check:
            try:
                parity = onnx_parity(backbone, path, batch_sizes=(2,) if args.static_batch else (1, 7))
            except ImportError:
                print("onnxruntime is not installed: parity not checked")
            else:
                for batch, (difference, scale) in parity.items():
                    print(f"onnxruntime vs PyTorch, batch {batch}: max |diff| {difference:.3g} "
                          f"(max |embedding| {scale:.3g})")
    if args.torchscript:
        path = export_torchscript(backbone, args.torchscript)
        print(f"wrote {path}")
        if not args.no_check:
            images = torch.rand(7, 3, backbone.input_size, backbone.input_size) * 2 - 1
            traced = torch.jit.load(os.fspath(path))
            with torch.no_grad():
                difference = (traced(images) - backbone(images).embedding).abs().max()
            print(f"TorchScript vs PyTorch, batch 7: max |diff| {float(difference):.3g}")
    return 0
