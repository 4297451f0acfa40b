"""`python -m drivesim.preview --data DIR --out FILE.png`: a contact sheet for people to look at.

Each line shows a train row's three frames; on the frame at t the true future path (the
targets, projected through K from the camera height, assuming the camera level with the
ego frame) is drawn, with the traffic-light boxes of the row's JSON and a few telemetry values.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from trajstack.config import load_config  # noqa: E402


def project_path(targets: np.ndarray, K, height_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Ego-frame points (n, 3: x forward, y left, z up) -> pixel u, v (NaN behind the camera)."""
    x, y, z = targets[:, 0], targets[:, 1], targets[:, 2] - height_m
    x = np.where(x > 0.5, x, np.nan)
    return K[0][2] - K[0][0] * y / x, K[1][2] - K[1][1] * z / x


def contact_sheet(data_dir: str | Path, out: str | Path, n_rows: int = 12, seed: int = 0, config: str = "atmacup18") -> Path:
    """Draw `n_rows` random train rows (three frames each) with their true future path.

    Returns
    -------
    The written PNG path.
    """
    spec = load_config(config).dataset
    data_dir = Path(data_dir)
    table = pd.read_csv(data_dir / spec.train_file, dtype={spec.id_column: str})
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(table), size=min(n_rows, len(table)), replace=False))
    n_frames = len(spec.frames)
    t_frame = int(np.argmax(spec.frame_offsets_s))
    fig, axes = plt.subplots(len(pick), n_frames, figsize=(3.2 * n_frames, 1.75 * len(pick)), squeeze=False)
    for r, i in enumerate(pick):
        row = table.iloc[i]
        rid = row[spec.id_column]
        tgt = np.array([[row[spec.target_name(a, k)] for a in spec.axes] for k in range(spec.n_horizons)])
        for f, name in enumerate(spec.frames):
            ax = axes[r, f]
            ax.imshow(Image.open(data_dir / spec.images_dir / rid / name), interpolation="nearest")
            ax.set_xlim(-0.5, spec.image_width - 0.5)
            ax.set_ylim(spec.image_height - 0.5, -0.5)
            ax.set_xticks([])
            ax.set_yticks([])
            if f != t_frame:
                ax.set_title(name, fontsize=6)
                continue
            u, v = project_path(tgt, spec.camera.K, spec.camera.height_m)
            ax.plot(u, v, "-o", color="cyan", ms=2, lw=1)
            lights = data_dir / (spec.traffic_lights_dir or "") / f"{rid}.json"
            if spec.traffic_lights_dir and lights.exists():
                for e in json.loads(lights.read_text()):
                    x1, y1, x2, y2 = e["bbox"]
                    ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="magenta", lw=0.8))
                    ax.text(x1, y1 - 1, e["class"], color="magenta", fontsize=5)
            blink = ("L" if str(row.get("leftBlinker")) == "True" else "") + ("R" if str(row.get("rightBlinker")) == "True" else "")
            ax.set_title(
                f"{rid[:8]}..{rid.split('_')[-1]} v={row['vEgo']:.1f} a={row['aEgo']:.1f} "
                f"st={row['steeringAngleDeg']:.0f} {row['gearShifter']} {blink} "
                f"x5={tgt[-1, 0]:.0f} y5={tgt[-1, 1]:.1f} z5={tgt[-1, 2]:.1f}", fontsize=5)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m drivesim.preview", description=__doc__)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--rows", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", default="atmacup18")
    args = parser.parse_args(argv)
    print(contact_sheet(args.data, args.out, args.rows, args.seed, args.config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
