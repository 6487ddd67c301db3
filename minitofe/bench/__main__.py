"""``python -m minitofe.bench [--json] [--quick] [--threads N] [--sections A,B] [--in-process]``."""
import sys

from . import main

sys.exit(main())
