"""Import before torch: make idle OpenMP threads sleep instead of spinning.

On a shared or oversubscribed CPU (this project's 2-core dev machines, CI), spinning OpenMP
workers fight the other processes for cores: a convnext_atto training step measured ~10x
slower with 2 spinning threads than with passive waits. libgomp reads the variable once, when
torch loads it, so this module must be imported first; a value set by the user wins.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
