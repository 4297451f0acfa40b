"""trajstack: two-stage stacking (multi-frame CNN + telemetry -> GBDT -> blend).

Every entry point imports this package before torch, so the OpenMP setting below takes effect:
on a shared or oversubscribed CPU (2-core dev machines, CI) spinning OpenMP workers fight the
other processes for cores (a convnext_atto step measured ~10x slower with 2 spinning threads
than with passive waits). libgomp reads the variable once, when torch loads; a user's value wins.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
