"""``python cli.py fit --config configs/...``: the same entry point as the ``fskd`` console script."""

import sys

from fskd.cli import main

if __name__ == "__main__":
    sys.exit(main())
