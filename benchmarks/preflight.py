"""Check, before any benchmark runs, that this Python can import everything the benchmarks need.

Usage: ``python benchmarks/preflight.py [NAME ...]`` (default: every benchmark that benchmarks/gpu.sh runs).
Imports ``benchmarks.NAME`` for each name, which pulls in exactly what that script needs (torch, Lightning, cv2,
fskd and its own dependencies) without running it, plus what a script needs only in the commands it starts
(`COMMAND_IMPORTS`: ``scale`` runs ``python -m fskd fit``, whose LightningCLI needs jsonargparse[signatures], which
Lightning itself does not install). Prints one line per missing package, naming the scripts
that need it and the package to install, and exits 2; exits 0 when every import works. Only the standard library
is imported here, so a missing torch is reported like any other package.
"""

from __future__ import annotations

import importlib
import sys
import traceback
from pathlib import Path

BENCHMARKS = ("training", "degradation", "evaluation", "data", "scale")

#: Benchmark -> modules its subprocesses import that importing the benchmark does not (a PyTorch image with
#: Lightning preinstalled usually lacks these: found by rehearsing gpu.sh with them hidden).
COMMAND_IMPORTS = {"scale": ("jsonargparse", "docstring_parser", "typeshed_client")}

#: Import name -> what to install, where they differ.
INSTALL = {"cv2": "opencv-python-headless (pip install -e '.[bench]')", "PIL": "pillow",
           "yaml": "pyyaml", "sklearn": "scikit-learn", "fskd": "the project itself (pip install -e .)",
           "jsonargparse": "'jsonargparse[signatures]'", "docstring_parser": "'jsonargparse[signatures]'",
           "typeshed_client": "'jsonargparse[signatures]'"}


def missing_imports(names: tuple[str, ...] | list[str] = BENCHMARKS) -> tuple[dict[str, list[str]], list[str]]:
    """``({missing top-level package: [benchmark scripts needing it]}, [other import failures])``."""
    repo = str(Path(__file__).resolve().parents[1])
    if repo not in sys.path:
        sys.path.insert(0, repo)
    missing: dict[str, list[str]] = {}
    broken: list[str] = []
    for name in names:
        script = f"benchmarks/{name}.py"
        for module in (f"benchmarks.{name}", *COMMAND_IMPORTS.get(name, ())):
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as error:
                package = (error.name or str(error)).split(".")[0]
                if script not in missing.setdefault(package, []):
                    missing[package].append(script)
            except Exception as error:  # an installed package that fails to load (e.g. a CUDA library mismatch)
                last = traceback.format_exception_only(error)[-1].strip()
                broken.append(f"{script}: {last}")
    return missing, broken


def main(argv: list[str] | None = None) -> int:
    names = list(sys.argv[1:] if argv is None else argv) or list(BENCHMARKS)
    missing, broken = missing_imports(names)
    for package, scripts in missing.items():
        print(f"gpu.sh: {sys.executable} cannot import {package} (needed by {', '.join(scripts)}): install "
              f"{INSTALL.get(package, package)}", file=sys.stderr)
    for line in broken:
        print(f"gpu.sh: {sys.executable} cannot import {line}", file=sys.stderr)
    return 2 if missing or broken else 0


if __name__ == "__main__":
    sys.exit(main())
