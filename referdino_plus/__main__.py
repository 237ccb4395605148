"""``python -m referdino_plus ...``: the command line of ``run_pipeline.py`` (:mod:`referdino_plus.cli`)."""

import sys

from referdino_plus.cli import main

if __name__ == "__main__":
    sys.exit(main())
