"""``python -m minitofe.bench [--json] [--quick]``."""
import sys

from . import main

sys.exit(main())
