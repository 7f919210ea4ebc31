"""fskd: low-resolution face recognition by Feature Similarity Knowledge Distillation (F-SKD).

Layers, lowest first; a module imports only its own layer and those below (``tests/test_architecture.py``
checks this and the absence of import cycles):

0. `fskd.data`: file formats (``recordio``, ``binfile``, ``folder``), datasets, image folders (``layouts``,
   ``sources``), degradation, the positives table of ``fskd_cross`` (``positives``), the synthetic face
   generator, and the DataModule with its sampler (``datamodule``, ``sampler``; the only Lightning code of this
   layer).
1. `fskd.models` (iResNet, heads, ``load_backbone``/``load_head``, export) and `fskd.losses` (F-SKD and the
   baselines, each loss class carrying its own metadata): plain PyTorch.
2. `fskd.evaluation`: the two 10-fold verification protocols and identification: numpy and plain PyTorch.
3. `fskd.systems` (``TeacherModule``, ``DistillModule`` and its positives mining, the torchmetrics
   ``VerificationMetric``), `fskd.callbacks`, `fskd.checkpoint_io`: the Lightning layer.
4. `fskd.commands`: one module per command.
5. `fskd.cli`: the command table (``fskd``, ``python cli.py`` and ``python -m fskd``).
"""
