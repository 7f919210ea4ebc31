"""The ``fskd`` commands, one module each; `fskd.cli` maps command names to them.

Each module exposes ``main(argv) -> int`` (exit status) and imports its heavy dependencies (torch, Lightning)
only after its arguments are parsed, so that ``fskd <command> --help`` answers at once.
"""
