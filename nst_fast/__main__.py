"""python -m nst_fast: the nst-fast command."""
import sys

from .app.cli import main

sys.exit(main())
