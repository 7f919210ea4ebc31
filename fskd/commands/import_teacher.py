"""``fskd import-teacher``: a pretrained face recogniser from another framework as an fskd checkpoint.

Formats: ``arcface_torch`` (insightface's PyTorch ``backbone.pth``), ``authors`` (the F-SKD/A-SKD authors'
``last_net.ckpt``, optionally with ``--head last_margin.ckpt``) and ``mxnet`` (insightface's model zoo:
``PREFIX-symbol.json`` + ``PREFIX-EPOCH.params``, SOURCE being PREFIX). The written checkpoint is accepted by
``--model.teacher_ckpt``, ``--model.init_from_teacher``, ``fskd validate|predict --ckpt_path``, ``identify``,
``export`` and `fskd.models.load_backbone`; the imported network takes images the way fskd feeds every model
(RGB, ``(x/255 - 0.5)/0.5``, NCHW, 112x112), any other input convention of the original being folded into its
first layer (recorded in the checkpoint under ``fskd_import``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

FORMATS = ("arcface_torch", "authors", "mxnet")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fskd import-teacher", description="Write an fskd checkpoint of a "
                                     "pretrained face recogniser (arcface_torch, the F-SKD authors' code, or "
                                     "insightface's MXNet model zoo).")
    parser.add_argument("source", help="arcface_torch/authors: the .pth/.ckpt file; mxnet: the PREFIX of "
                        "PREFIX-symbol.json and PREFIX-0000.params")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--arch", default=None, help="expected backbone (e.g. iresnet50); checked against the "
                        "weights, which define it")
    parser.add_argument("--epoch", type=int, default=0, help="mxnet: the PREFIX-EPOCH.params to read")
    parser.add_argument("--head", default=None, help="authors: their last_margin.ckpt, kept for logit "
                        "distillation (hkd)")
    parser.add_argument("--head-type", default="cosface", help="margin of --head (the authors' paper-era "
                        "code: cosface s=30 m=0.25)")
    parser.add_argument("--head-kwargs", default='{"s": 30.0, "m": 0.25}', type=json.loads,
                        help="JSON keyword arguments of the head")
    parser.add_argument("--out", required=True, help="the fskd checkpoint to write (.ckpt)")
    return parser


def main(argv: Sequence[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.head and args.format != "authors":
        parser.error("--head is read for --format authors only")
    import torch

    from fskd.models.loading import atomic_torch_save, imported_checkpoint, load_backbone

    if args.format == "mxnet":
        from fskd.models.importers.mxnet import import_mxnet

        backbone, architecture, source = import_mxnet(args.source, args.epoch)
        if args.arch and args.arch != architecture["backbone"]:
            parser.error(f"--arch {args.arch}, but {args.source} holds a {architecture['backbone']}")
    else:
        from fskd.models.importers.torch_formats import import_arcface_torch, import_authors, import_authors_head

        importer = import_arcface_torch if args.format == "arcface_torch" else import_authors
        backbone, architecture, source = importer(args.source, args.arch)
    head, head_hparams = None, None
    if args.head:
        head, head_hparams = import_authors_head(args.head, architecture["embedding_size"], args.head_type,
                                                 **args.head_kwargs)
        source = {**source, "head": str(args.head)}
    out = Path(args.out)
    atomic_torch_save(imported_checkpoint(backbone, architecture, source, head, head_hparams), out)

    # Read back as every fskd command will, and check it computes what the imported network computes.
    reloaded = load_backbone(out)
    images = torch.rand(2, 3, 112, 112, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        difference = float((reloaded(images).embedding - backbone(images).embedding).abs().max())
    parameters = sum(p.numel() for p in reloaded.parameters())
    print(f"wrote {out}: {architecture['backbone']} ({architecture['mode']}, neck {architecture['neck']}, "
          f"{architecture['embedding_size']}-d), {parameters:,} parameters"
          + (f", head {head_hparams['head']} with {head_hparams['num_classes']} classes" if head_hparams else ""))
    print(f"input: {source['input']}")
    print(f"reloaded with load_backbone: max |embedding difference| {difference:.3g}")
    return 0 if difference == 0.0 else 1
