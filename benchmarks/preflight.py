"""Check, before any benchmark runs, that this Python can import everything the benchmarks need.

Usage: ``python benchmarks/preflight.py [NAME ...]`` (default: every benchmark that benchmarks/gpu.sh runs).
Imports ``benchmarks.NAME`` for each name, which pulls in exactly what that script needs (torch, Lightning, cv2,
fskd and its own dependencies) without running it. Prints one line per missing package, naming the scripts
that need it and the package to install, and exits 2; exits 0 when every import works. Only the standard library
is imported here, so a missing torch is reported like any other package.
"""

from __future__ import annotations

import importlib
import sys
import traceback
from pathlib import Path

BENCHMARKS = ("training", "degradation", "evaluation", "data", "scale")

#: Import name -> what to install, where they differ.
INSTALL = {"cv2": "opencv-python-headless (pip install -e '.[bench]')", "PIL": "pillow",
           "yaml": "pyyaml", "sklearn": "scikit-learn", "fskd": "the project itself (pip install -e .)"}


def missing_imports(names: tuple[str, ...] | list[str] = BENCHMARKS) -> tuple[dict[str, list[str]], list[str]]:
    """``({missing top-level package: [benchmark scripts needing it]}, [other import failures])``."""
    repo = str(Path(__file__).resolve().parents[1])
    if repo not in sys.path:
        sys.path.insert(0, repo)
    missing: dict[str, list[str]] = {}
    broken: list[str] = []
    for name in names:
        script = f"benchmarks/{name}.py"
        try:
            importlib.import_module(f"benchmarks.{name}")
        except ModuleNotFoundError as error:
            package = (error.name or str(error)).split(".")[0]
            missing.setdefault(package, []).append(script)
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
