"""Evaluate the voice scam model on the independent evaluation set; write its figures
into docs/voice-model.md and models/voice/<version>.eval.json.

The set (data/voice/eval/calls.txt, spoken by scripts/voice_eval_set.py) was written
apart from the training corpus, in other wording, and is spoken in voices, speeds and
line processing that training never uses. Nothing here feeds back into training: the
model is chosen and calibrated on the training corpus's ``val`` split only.

Each call is scored through the production ``score_clip`` three ways: from audio alone
(speech recognition makes the transcript), with the true transcript and no audio, and
with both. Reported: ROC AUC with a bootstrap 95% interval, AUC per difficulty (subtle
scams against all benign calls; all scams against look-alike benign calls), precision
and recall at each risk threshold, the Brier score and reliability bins, a keyword-count
baseline, and the recognizer's word error rate and time per clip. Recognition output is
cached under var/voice-model/ (with the time it took when it ran), so a re-run only
re-scores.

    .venv/bin/python scripts/evaluate_voice_model.py [--model PATH] [--asr PATH] [--write-docs]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time
from pathlib import Path

import numpy as np
from voice_data import CACHE_DIR, ROOT
from voice_eval_set import load_calls, synthesize_call

from app.services.voice.features import normalize_text, text_features
from app.services.voice.model import ScoringDeps, Thresholds, load_asr, load_model, score_clip

BOOTSTRAP = 2000
INPUTS = ("audio", "transcript", "audio+transcript")


class CachedAsr:
    """The production recognizer; text, quality and seconds cached by the clip's sha256."""

    def __init__(self, path: str, tag: str) -> None:
        self.path_arg, self.asr = path, None
        self.file = CACHE_DIR / f"asr-eval-{tag}.json"
        self.data: dict[str, list] = {}
        # Also what a parallel fill (``--part i/n``) left in asr-eval-<tag>.<i>.json.
        for part in sorted(CACHE_DIR.glob(f"asr-eval-{tag}.*.json")) + [self.file]:
            if part.exists():
                self.data.update(json.loads(part.read_text()))
        self.name = f"faster-whisper:{tag}"
        self.key = ""

    def transcribe(self, samples: np.ndarray) -> tuple[str, float]:
        if self.key not in self.data:
            if self.asr is None:
                self.asr = load_asr(self.path_arg, "int8", 1)
            t0 = time.perf_counter()
            text, quality = self.asr.transcribe(samples)
            self.data[self.key] = [text, quality, time.perf_counter() - t0]
            self.file.parent.mkdir(parents=True, exist_ok=True)
            self.file.write_text(json.dumps(self.data))
        text, quality, _ = self.data[self.key]
        return text, quality


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate by edit distance over normalised words."""
    ref, hyp = normalize_text(reference).split(), normalize_text(hypothesis).split()
    d = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, d[0] = d[0], i
        for j, h in enumerate(hyp, 1):
            cur = min(d[j] + 1, d[j - 1] + 1, prev + (r != h))
            prev, d[j] = d[j], cur
    return d[len(hyp)] / max(1, len(ref))


def auc_ci(y: np.ndarray, s: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """ROC AUC and a stratified bootstrap 95% interval."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    draws = []
    for _ in range(BOOTSTRAP):
        idx = np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)])
        draws.append(roc_auc_score(y[idx], s[idx]))
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return float(roc_auc_score(y, s)), float(lo), float(hi)


def pr_at(y: np.ndarray, s: np.ndarray, threshold: float) -> tuple[float, float, int]:
    flagged = s >= threshold
    tp = int(np.sum(flagged & (y == 1)))
    return tp / max(1, int(flagged.sum())), tp / max(1, int(np.sum(y == 1))), int(flagged.sum())


def recognise_part(asr: CachedAsr, part: str) -> None:
    """Only recognise the calls of one part (``i/n``: every n-th call from the i-th), into
    asr-eval-<tag>.<i>.json: n processes fill the cache in parallel; a later run scores."""
    i, n = (int(x) for x in part.split("/"))
    asr.file = asr.file.with_suffix(f".{i}.json")
    from app.services.voice.features import AudioLimits, decode_audio

    for k, call in enumerate(load_calls()):
        if k % n == i:
            wav, _ = synthesize_call(call, k)
            asr.key = hashlib.sha256(wav).hexdigest()
            asr.transcribe(decode_audio(wav, AudioLimits()))


def score_all(deps: ScoringDeps, asr: CachedAsr) -> list[dict]:
    """Every call scored three ways, with the recognised transcript and its word error rate."""
    out = []
    for n, call in enumerate(load_calls()):
        wav, how = synthesize_call(call, n)
        asr.key = hashlib.sha256(wav).hexdigest()
        heard = score_clip(deps, wav, None)
        row = {"id": call.id, "label": int(call.label == "scam"), "kind": call.kind, "difficulty": call.difficulty,
               **how, "heard": heard["transcript"], "wer": wer(call.text, heard["transcript"] or ""),
               "asr_s": asr.data[asr.key][2], "duration_s": heard["duration_seconds"],
               "audio": heard["scam_score"], "transcript": score_clip(deps, None, call.text)["scam_score"],
               "audio+transcript": score_clip(deps, wav, call.text)["scam_score"],
               "keywords_heard": _keywords(heard["transcript"]), "keywords_true": _keywords(call.text),
               "encoder_ms": heard["timings_ms"]["encoder_ms"]}
        out.append(row)
        if n % 20 == 19:
            print(f"  {n + 1} calls scored", flush=True)
    return out


def _keywords(text: str | None) -> float:
    """The naive baseline: how many scam phrases of the cue families the transcript holds."""
    return float(sum(len(v) for v in text_features(text).matches.values()))


def figures(rows: list[dict], t: Thresholds) -> dict:
    """Every reported figure, as a dict (written to the .eval.json)."""
    from sklearn.metrics import brier_score_loss

    y = np.asarray([r["label"] for r in rows])
    diff = np.asarray([r["difficulty"] for r in rows])
    out: dict = {"calls": len(rows), "scam": int(y.sum()), "benign": int((y == 0).sum()),
                 "subtle": int((diff == "subtle").sum()), "lookalike": int((diff == "lookalike").sum())}
    for name in INPUTS + ("keywords_heard", "keywords_true"):
        s = np.asarray([r[name] for r in rows])
        entry = {"auc": auc_ci(y, s)}
        subtle = (diff == "subtle") | (y == 0)
        hard_benign = (diff == "lookalike") | (y == 1)
        entry["auc_subtle"] = auc_ci(y[subtle], s[subtle])
        entry["auc_lookalike"] = auc_ci(y[hard_benign], s[hard_benign])
        if name in INPUTS:
            entry["brier"] = float(brier_score_loss(y, s))
            entry["thresholds"] = {lvl: pr_at(y, s, v) for lvl, v in
                                   (("MEDIUM", t.medium), ("HIGH", t.high), ("CRITICAL", t.critical))}
            entry["reliability"] = reliability(y, s)
        out[name] = entry
    return out


def reliability(y: np.ndarray, s: np.ndarray, bins: int = 10) -> list[list[float]]:
    """[mean score, fraction scam, count] per tenth of the score range."""
    out = []
    for b in range(bins):
        sel = (s >= b / bins) & ((s < (b + 1) / bins) if b < bins - 1 else (s <= 1.0))
        if sel.any():
            out.append([float(s[sel].mean()), float(y[sel].mean()), int(sel.sum())])
    return out


def _ci(v: tuple[float, float, float]) -> str:
    return f"{v[0]:.3f} ({v[1]:.2f}–{v[2]:.2f})"


def table(f: dict, rows: list[dict], model, t: Thresholds, asr_name: str) -> str:  # type: ignore[no-untyped-def]
    """The markdown written into docs/voice-model.md."""
    phone = [r for r in rows if r["phone_line"]]
    wers, asr_s = [r["wer"] for r in rows], [r["asr_s"] for r in rows]
    lines = [
        f"Independent set: {f['calls']} calls ({f['scam']} scam of {len({r['kind'] for r in rows if r['label']})} kinds, "
        f"{f['subtle']} of them subtle; {f['benign']} benign, {f['lookalike']} of them look-alikes), "
        f"{len(phone)} through the phone line. Model `{model.version}` sha256 `{model.sha256[:16]}…`; "
        f"recognizer {asr_name}. Thresholds MEDIUM {t.medium}, HIGH {t.high}, CRITICAL {t.critical}. "
        f"ROC AUC with bootstrap 95% interval ({BOOTSTRAP} stratified resamples).",
        "",
        "| input | ROC AUC | subtle scams vs all benign | all scams vs look-alike benign | Brier |",
        "|---|---|---|---|---|",
    ]
    for name in INPUTS:
        e = f[name]
        lines.append(f"| {name} | {_ci(e['auc'])} | {_ci(e['auc_subtle'])} | {_ci(e['auc_lookalike'])} | {e['brier']:.3f} |")
    for name, label in (("keywords_heard", "keyword count, recognised transcript"),
                        ("keywords_true", "keyword count, true transcript")):
        e = f[name]
        lines.append(f"| baseline: {label} | {_ci(e['auc'])} | {_ci(e['auc_subtle'])} | {_ci(e['auc_lookalike'])} | |")
    lines += ["", "| input | level ≥ | threshold | flagged | precision | recall |", "|---|---|---|---|---|---|"]
    for name in INPUTS:
        for lvl, (p, r, n) in f[name]["thresholds"].items():
            value = {"MEDIUM": t.medium, "HIGH": t.high, "CRITICAL": t.critical}[lvl]
            lines.append(f"| {name} | {lvl} | {value} | {n} | {p:.3f} | {r:.3f} |")
    lines += [
        "",
        f"Recognition word error rate on these calls: median {statistics.median(wers):.3f}, mean "
        f"{statistics.mean(wers):.3f} (phone line: median {statistics.median([r['wer'] for r in phone]):.3f}; "
        f"clean: median {statistics.median([r['wer'] for r in rows if not r['phone_line']]):.3f}). Recognition time "
        f"per call: median {statistics.median(asr_s):.2f} s for calls of median "
        f"{statistics.median([r['duration_s'] for r in rows]):.0f} s (one thread). Sentence encoder per call "
        f"(windows of the recognised transcript): median {statistics.median([r['encoder_ms'] for r in rows]):.1f} ms. "
        "Produced by `.venv/bin/python scripts/evaluate_voice_model.py --write-docs`.",
    ]
    return "\n".join(lines)


def main() -> None:
    """Score every call, print (optionally write) the table; figures and per-call scores to JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "voice" / "scam-v2.onnx")
    parser.add_argument("--asr", default="", help="faster-whisper model directory (default: the bundled tiny.en)")
    parser.add_argument("--write-docs", action="store_true", help="write the table into docs/voice-model.md")
    parser.add_argument("--part", help="i/n: only recognise every n-th call into the cache (parallel fill), no scoring")
    args = parser.parse_args()
    tag = Path(args.asr).name if args.asr else "tiny.en"
    if args.part:
        recognise_part(CachedAsr(args.asr, tag), args.part)
        return

    thresholds = Thresholds()
    model = load_model(args.model, threads=1)
    asr = CachedAsr(args.asr, tag)
    rows = score_all(ScoringDeps(model=model, asr=asr, thresholds=thresholds), asr)
    f = figures(rows, thresholds)
    text = table(f, rows, model, thresholds, asr.name)
    print(text)
    (CACHE_DIR / f"eval-scores-{tag}.json").write_text(json.dumps(rows, indent=1))
    if args.write_docs:
        from bench.common import replace_section

        replace_section(str(ROOT / "docs" / "voice-model.md"), "voice-eval", text)
        out = args.model.with_suffix(".eval.json")
        out.write_text(json.dumps({"asr": asr.name, **f}, indent=1) + "\n")


if __name__ == "__main__":
    main()
