"""``python -m deeprec.cli``: how the launcher starts its child processes."""

import sys

from deeprec.cli import main

sys.exit(main())
