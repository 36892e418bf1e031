"""Draw the reliability plot of the voice scam model on the independent evaluation set
(docs/voice-model-reliability.png) from the per-call scores that
scripts/evaluate_voice_model.py leaves in var/voice-model/. Needs matplotlib, which the
build environment of scripts/build_voice_model has (the worker does not).

    <build venv>/bin/python scripts/plot_voice_reliability.py [--scores var/voice-model/eval-scores-tiny.en.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
INPUTS = (("audio", "audio alone (recognised)"), ("transcript", "true transcript"),
          ("audio+transcript", "audio + true transcript"))


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scores", type=Path, default=ROOT / "var" / "voice-model" / "eval-scores-tiny.en.json")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "voice-model-reliability.png")
    args = parser.parse_args()
    rows = json.loads(args.scores.read_text())
    y = np.asarray([r["label"] for r in rows])
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(6, 7), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.plot([0, 1], [0, 1], "k:", label="perfectly calibrated")
    edges = np.linspace(0, 1, 6)
    for key, label in INPUTS:
        s = np.asarray([r[key] for r in rows])
        idx = np.clip(np.digitize(s, edges) - 1, 0, len(edges) - 2)
        pts = [(s[idx == b].mean(), y[idx == b].mean()) for b in range(len(edges) - 1) if (idx == b).any()]
        brier = float(np.mean((s - y) ** 2))
        ax.plot(*zip(*pts), "o-", label=f"{label} (Brier {brier:.3f})")
        hist.hist(s, bins=edges, histtype="step", label=label)
    ax.set_ylabel("fraction of calls that are scams")
    ax.set_title(f"scam_score reliability, independent set ({len(rows)} calls, 5 bins)")
    ax.legend(loc="upper left", fontsize=8)
    hist.set_xlabel("scam_score")
    hist.set_ylabel("calls")
    fig.tight_layout()
    fig.savefig(args.out, dpi=90, metadata={"Software": None})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
