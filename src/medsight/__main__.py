"""``python -m medsight`` runs the CLI."""

import sys

from medsight.cli import main

sys.exit(main())
