"""``python -m leveret serve ...``"""

import sys

from leveret.broker.cli import main

sys.exit(main())
