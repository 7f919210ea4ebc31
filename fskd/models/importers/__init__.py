"""Importers of pretrained face recognisers from other frameworks (`fskd import-teacher`): each returns
``(backbone, architecture, source)`` for `fskd.models.loading.imported_checkpoint`."""
