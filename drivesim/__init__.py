"""drivesim: an embedded driving simulator writing atmaCup #18-format data with an error floor.

`python -m drivesim --out DIR ...` writes the dataset (layout from the dataset spec) and
`DIR/oracle/` (test labels, hidden state, camera-visible state, the irreducible-error floor),
which the pipeline never reads. Modules: road (the world), vehicle (kinematics), driver (one batched step), scene
(chunks of scenes -> rows), oracle (rollouts), render (frames), writer (files), score, preview.
"""

from drivesim.writer import generate, simulate_rows

__all__ = ["generate", "simulate_rows"]
