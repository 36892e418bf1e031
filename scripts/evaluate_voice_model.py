"""Held-out evaluation of the voice scam model; writes its figures into docs/voice-model.md.

The held-out split of the corpus (transcripts never used in training) is synthesized
with espeak-ng voices and speeds that training never used (``HELDOUT_VOICES``,
``HELDOUT_SPEEDS``), two clips per transcript. Each clip is scored three ways through
the production scoring function:

- audio alone: speech recognition (faster-whisper, Whisper tiny.en) makes the transcript;
- audio with the true transcript provided;
- the transcript alone.

Reported: ROC AUC, precision and recall at the HIGH threshold, word error rate of the
recognition, and time per clip.

    .venv/bin/python scripts/evaluate_voice_model.py [--model PATH] [--write-docs]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from voice_data import ROOT, clip, load_corpus

from app.dev.voice_clips import HELDOUT_SPEEDS, HELDOUT_VOICES, style_for
from app.services.voice.model import ScoringDeps, Thresholds, load_asr, load_model, score_clip

SEED = 99
CLIPS_PER_TRANSCRIPT = 2


class TimedAsr:
    """The production recognizer, timing each call (never cached: recognition is under test)."""

    def __init__(self) -> None:
        self.asr = load_asr()
        self.name = self.asr.name
        self.seconds: list[float] = []

    def transcribe(self, samples: np.ndarray) -> tuple[str, float]:
        t0 = time.perf_counter()
        out = self.asr.transcribe(samples)
        self.seconds.append(time.perf_counter() - t0)
        return out


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate by edit distance over normalised words."""
    from app.services.voice.features import normalize_text

    ref, hyp = normalize_text(reference).split(), normalize_text(hypothesis).split()
    d = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, d[0] = d[0], i
        for j, h in enumerate(hyp, 1):
            cur = min(d[j] + 1, d[j - 1] + 1, prev + (r != h))
            prev, d[j] = d[j], cur
    return d[len(hyp)] / max(1, len(ref))


def pr_at(y: np.ndarray, scores: np.ndarray, threshold: float) -> tuple[float, float]:
    flagged = scores >= threshold
    tp = int(np.sum(flagged & (y == 1)))
    precision = tp / max(1, int(flagged.sum()))
    recall = tp / max(1, int(np.sum(y == 1)))
    return precision, recall


def main() -> None:
    """Score every held-out clip three ways and print (optionally write) the table."""
    from sklearn.metrics import roc_auc_score

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "voice" / "scam-v1.onnx")
    parser.add_argument("--write-docs", action="store_true", help="write the table into docs/voice-model.md")
    args = parser.parse_args()

    thresholds = Thresholds()
    model = load_model(args.model)
    asr = TimedAsr()
    deps = ScoringDeps(model=model, asr=asr, thresholds=thresholds)
    rows = load_corpus("test")
    y: list[int] = []
    scores: dict[str, list[float]] = {"audio": [], "audio+transcript": [], "transcript": []}
    errors: list[float] = []
    errors_by_voice: dict[str, list[float]] = {}
    per_clip: list[float] = []
    for n, row in enumerate(rows):
        for k in range(CLIPS_PER_TRANSCRIPT):
            style = style_for(n * CLIPS_PER_TRANSCRIPT + k, HELDOUT_VOICES, HELDOUT_SPEEDS, SEED)
            wav = clip(row["text"], style)
            t0 = time.perf_counter()
            heard = score_clip(deps, wav, None)
            per_clip.append(time.perf_counter() - t0)
            scores["audio"].append(heard["scam_score"])
            scores["audio+transcript"].append(score_clip(deps, wav, row["text"])["scam_score"])
            if k == 0:
                scores["transcript"].append(score_clip(deps, None, row["text"])["scam_score"])
            errors.append(wer(row["text"], heard["transcript"] or ""))
            errors_by_voice.setdefault(style.voice, []).append(errors[-1])
            y.append(1 if row["label"] == "scam" else 0)
    ya = np.asarray(y)
    yt = ya[::CLIPS_PER_TRANSCRIPT]
    lines = [
        f"Held-out set: {len(rows)} transcripts never used in training ({int(yt.sum())} scam, "
        f"{len(yt) - int(yt.sum())} benign), {len(y)} clips in voices {', '.join(HELDOUT_VOICES)} at "
        f"{' / '.join(str(s) for s in HELDOUT_SPEEDS)} words per minute (±5), none used in training. "
        f"Model `{model.version}` sha256 `{model.sha256[:16]}…`. HIGH threshold {thresholds.high}.",
        "",
        "| input | clips | ROC AUC | precision at HIGH | recall at HIGH |",
        "|---|---|---|---|---|",
    ]
    for name, values in scores.items():
        labels = yt if name == "transcript" else ya
        s = np.asarray(values)
        auc = roc_auc_score(labels, s)
        p, r = pr_at(labels, s, thresholds.high)
        lines.append(f"| {name} | {len(s)} | {auc:.3f} | {p:.3f} | {r:.3f} |")
    asr_times = asr.seconds
    lines += [
        "",
        f"Speech recognition word error rate on these clips: median {statistics.median(errors):.3f}, "
        f"mean {statistics.mean(errors):.3f} (median by voice: "
        + ", ".join(f"{v} {statistics.median(e):.2f}" for v, e in sorted(errors_by_voice.items()))
        + "). Recognition time per clip: median "
        f"{statistics.median(asr_times):.2f} s over {len(asr_times)} clips; whole scoring call from audio "
        f"median {statistics.median(per_clip):.2f} s. Produced by `.venv/bin/python scripts/evaluate_voice_model.py "
        "--write-docs`.",
    ]
    table = "\n".join(lines)
    print(table)
    if args.write_docs:
        from bench.common import replace_section

        replace_section(str(ROOT / "docs" / "voice-model.md"), "voice-eval", table)


if __name__ == "__main__":
    main()
