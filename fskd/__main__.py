import sys

from fskd.cli import main

sys.exit(main())
