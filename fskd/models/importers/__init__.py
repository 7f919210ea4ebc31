"""Importers of pretrained face recognisers from other frameworks into fskd backbones (plain PyTorch).

* `fskd.models.importers.mxnet`: insightface's MXNet model zoo (``PREFIX-symbol.json`` + ``PREFIX-EPOCH.params``):
  MobileFaceNet-y1 and LResNet-IR (r18/34/50/100), the graph walked node by node;
* `fskd.models.importers.torch_formats`: insightface's arcface_torch ``backbone.pth`` and the F-SKD authors'
  checkpoints.

Each returns ``(backbone, architecture, source)`` for `fskd.models.loading.imported_checkpoint`, with the original's
input convention folded into the weights so that the backbone takes what fskd feeds every model: RGB,
``(x/255 - 0.5)/0.5``, NCHW, 112x112. The submodules are imported where used (``fskd import-teacher``).
"""
