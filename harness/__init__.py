"""golf-harness: train, score and record small language models the way parameter-golf scores them.

Flow: cli → variants/budgets → data → train → metric → artifact → results (see README.md).
"""

import time
from pathlib import Path

# Taken before torch is imported, so a record can say how much of the wallclock was not training.
PROCESS_START = time.perf_counter()

REPO_ROOT = Path(__file__).resolve().parent.parent
__version__ = "0.1.0"

# The harness's files hashed now, before any plugin can be imported (harness/integrity.py).
from harness import integrity as _integrity  # noqa: E402,F401
