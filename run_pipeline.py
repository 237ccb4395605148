#!/usr/bin/env python
"""ReferDINO-Plus: ReferDINO proposals -> SAM 2 refinement -> conditional fusion -> MeViS archives.

    python run_pipeline.py [--gids 0 1 2 3] [--stages 1 2 3] [--cpu] [--name RUN] [--overwrite]
                           [key=value ...]
    python run_pipeline.py demo --video PATH --text SENTENCE [...]

The same as the ``referdino-plus`` command; see :mod:`referdino_plus.cli`.
"""

import sys

from referdino_plus.cli import main

if __name__ == "__main__":
    sys.exit(main())
