"""``python -m advlab`` runs the command line (also under ``torchrun ... -m advlab``)."""

import sys

from advlab.cli import main

if __name__ == "__main__":
    sys.exit(main())
