"""``python -m minitofe ...``: the same as the ``minitofe`` command (see ``minitofe.cli``)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
