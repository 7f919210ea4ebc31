"""Command-line entry point: ``fskd`` (console script), ``python cli.py`` and ``python -m fskd`` are the same.

`COMMANDS` is the one table of commands: each name maps to the module in `fskd.commands` whose
``main(argv)`` runs it. Modules are imported only when their command runs, so ``fskd --help`` and
``fskd <tool> --help`` never import Lightning.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    """A command: the module holding its ``main(argv) -> int`` and a one-line summary for ``fskd --help``."""

    module: str
    summary: str
    usage: str = ""
    lightning: bool = False
    """A LightningCLI subcommand: ``main`` receives the whole argument list, subcommand included."""


COMMANDS: dict[str, Command] = {
    "fit": Command("fskd.commands.lightning", "train a teacher or a student", "--config CONFIG.yaml [...]",
                   lightning=True),
    "validate": Command("fskd.commands.lightning", "score a checkpoint on the verification sets",
                        "--config CONFIG.yaml --ckpt_path CKPT", lightning=True),
    "test": Command("fskd.commands.lightning", "as validate, on the test loaders", "--config CONFIG.yaml",
                    lightning=True),
    "predict": Command("fskd.commands.lightning", "embeddings of a folder or .rec to .npy + names",
                       "--config CONFIG.yaml --ckpt_path CKPT --data.predict_source SRC", lightning=True),
    "synth": Command("fskd.commands.synth", "synthetic identity faces in the insightface layout",
                     "--out DIR [--identities N --images-per-identity M --pairs P --seed S]"),
    "synth-tinyface": Command("fskd.commands.synth_tinyface", "synthetic faces in TinyFace's layout",
                              "--out DIR [--identities N --probes P --gallery G --distractors D]"),
    "prepare": Command("fskd.commands.prepare", "insightface .rec/.bin to the authors' extracted layout",
                       "--source DIR --out DIR [--sets agedb_30 lfw cfp_fp]"),
    "identify": Command("fskd.commands.identify", "closed-set identification, CMC rank-1/5/10/20",
                        "--ckpt CKPT --root DIR [--layout tinyface|folder] [--resolution R]"),
    "export": Command("fskd.commands.export", "a backbone to ONNX / TorchScript, parity-checked",
                      "--ckpt CKPT --onnx OUT.onnx [--torchscript OUT.pt]"),
    "import-teacher": Command("fskd.commands.import_teacher", "a pretrained recogniser as an fskd checkpoint",
                              "SOURCE --format arcface_torch|authors|mxnet --out FILE.ckpt"),
    "realfaces": Command("fskd.commands.realfaces", "F-SKD on real faces (ORL + Yale B) with a real teacher",
                         "--data ../shared/data/real-faces --out DIR [--preset smoke|full]"),
    "demo": Command("fskd.commands.demo", "synthetic faces -> teacher, base and F-SKD students -> tables",
                    "[--out DIR] [--preset quick|full|smoke] [--seeds 0 1 2]"),
    "grid": Command("fskd.commands.grid", "the synthetic method grid: every distillation method vs base, seeds",
                    "[--out DIR] [--preset cpu|full|smoke] [--methods ...] [--seeds ...]"),
}


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: fskd COMMAND [ARGS ...]   (fskd COMMAND --help for its arguments)", "", "commands:"]
    for name, command in COMMANDS.items():
        lines.append(f"  {name:<{width}}  {command.summary}")
        if command.usage:
            lines.append(f"  {'':<{width}}    fskd {name} {command.usage}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command named by the first argument; ``argv`` None means ``sys.argv[1:]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    command = COMMANDS.get(args[0])
    if command is None:
        print(f"fskd: unknown command {args[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(command.module)
    if command.lightning:
        # From the shell, LightningCLI reads sys.argv itself (it warns when given both).
        return module.main(None if argv is None else args)
    return module.main(args[1:])


if __name__ == "__main__":
    sys.exit(main())
