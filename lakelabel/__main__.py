"""``python -m lakelabel`` is the ``lakelabel`` command (``torchrun -m lakelabel pretrain …`` for DDP)."""

import sys

from lakelabel.cli import main

if __name__ == "__main__":
    sys.exit(main())
