"""Train the shipped voice scam model's classifier head and export it to ONNX
(models/voice/scam-v2.onnx), calibrated on held-out training-side data.

Features (app/services/voice/features.py ``FEATURE_NAMES``): the transcript's sentence
embedding from the shipped encoder (models/voice/encoder/, all-MiniLM-L6-v2 int8,
mean and max over sentence windows), the counts of the twelve scam phrase families and
of reassurance phrases, and two flags (audio present, transcript present).

Data: data/voice/transcripts.jsonl (scripts/make_voice_corpus.py). Every transcript
gives two rows, as a call arrives with audio (audio flag 1) and as a transcript alone
(flag 0); the model reads no acoustic feature, so no audio needs synthesizing. Recognised
transcripts are not trained on (recognising a thousand clips did not fit the build's
CPU budget; ``--asr-every K`` adds a recognised row for every K-th transcript, through
the cache under var/voice-model/). Split ``train`` fits a logistic regression (standardised inputs,
balanced classes). Its C is chosen, and its Platt calibration fitted, by cross-validation
that holds out whole *kinds* of call (5 folds grouped by category: the model is judged
on scams and legitimate calls of kinds it was not fitted on, which is what a new call
is; folds grouped by transcript only reward learning the templates, all near 1.0). The
Platt scaling of the out-of-fold logits is folded into the exported coefficients, so
the ONNX output is the calibrated probability. Split ``val`` (never fitted on) is
reported as a check. The
independent evaluation set (data/voice/eval/) is never read here.

    .venv/bin/python scripts/train_voice_model.py [--out models/voice/scam-v2.onnx]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from voice_data import CACHE_DIR, LIMITS, ROOT, AsrCache, clip, load_corpus

from app.dev.voice_clips import TRAIN_SPEEDS, TRAIN_VOICES, style_for
from app.services.voice.encoder import load_encoder
from app.services.voice.features import (
    FEATURE_NAMES,
    Acoustics,
    acoustic_features,
    decode_audio,
    feature_vector,
    text_features,
)
from app.services.voice.model import load_model

SEED = 7
VERSION = "scam-v2"
C_GRID = [0.003, 0.01, 0.03, 0.1, 0.3]


def _inputs(n: int, row: dict, encoder, cache: AsrCache, asr_every: int) -> list:  # type: ignore[no-untyped-def]
    """(kind, acoustics, transcript, embedding) of each row one transcript gives."""
    none = acoustic_features(None)
    flagged = Acoustics(values={**none.values, "has_audio": 1.0})
    true_emb = encoder.embed(row["text"])
    out = [("audio+transcript", flagged, row["text"], true_emb), ("transcript", none, row["text"], true_emb)]
    if asr_every and n % asr_every == 0:
        wav = clip(row["text"], style_for(n, TRAIN_VOICES, TRAIN_SPEEDS, SEED))
        heard = cache.transcribe(wav)
        out.append(("audio", acoustic_features(decode_audio(wav, LIMITS)), heard, encoder.embed(heard)))
    return out


def build_rows(rows: list[dict], encoder, asr_every: int) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    """Feature matrix, labels, groups (transcript) and row kinds of the given transcripts."""
    cache = AsrCache("train-v2")
    X, y, groups, kinds, difficulty, category = [], [], [], [], [], []
    started = time.monotonic()
    for n, row in enumerate(rows):
        for kind, acoustics, text, emb in _inputs(n, row, encoder, cache, asr_every):
            X.append(feature_vector(acoustics, text_features(text), emb))
            y.append(1 if row["label"] == "scam" else 0)
            groups.append(n)
            kinds.append(kind)
            difficulty.append(row["difficulty"])
            category.append(row["category"])
        if n % 100 == 99:
            cache.save()
            print(f"  {n + 1}/{len(rows)} transcripts, {time.monotonic() - started:.0f} s", flush=True)
    cache.save()
    return {"X": np.asarray(X, dtype=np.float32), "y": np.asarray(y), "groups": np.asarray(groups),
            "kind": np.asarray(kinds), "difficulty": np.asarray(difficulty), "category": np.asarray(category)}


def cached_rows(split: str, rows: list[dict], encoder, asr_every: int) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    """``build_rows``, kept under var/voice-model/ keyed by the transcripts, the encoder and the options."""
    import hashlib

    key = hashlib.sha256(json.dumps([rows, encoder.sha256, asr_every, FEATURE_NAMES]).encode()).hexdigest()[:16]
    path = CACHE_DIR / f"rows-{split}-{key}.npz"
    if path.exists():
        with np.load(path) as cached:
            return dict(cached)
    data = build_rows(rows, encoder, asr_every)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **data)
    return data


def fit_head(train: dict[str, np.ndarray]):  # type: ignore[no-untyped-def]
    """Standardised logistic regression, C by grouped 5-fold cross-validation."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, GroupKFold
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    pipe = Pipeline([("scale", StandardScaler()),
                     ("clf", LogisticRegression(max_iter=5000, class_weight="balanced", random_state=SEED))])
    search = GridSearchCV(pipe, {"clf__C": C_GRID}, scoring="roc_auc", cv=GroupKFold(n_splits=5), n_jobs=1)
    search.fit(train["X"], train["y"], groups=train["category"])
    return search


def calibrate(model, train: dict[str, np.ndarray]) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Platt scaling of the out-of-fold (kind held out) logits: p = sigmoid(a * logit + b); folded into the head."""
    from sklearn.base import clone
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_predict

    z = cross_val_predict(clone(model), train["X"], train["y"], groups=train["category"], cv=GroupKFold(n_splits=5),
                          method="decision_function").reshape(-1, 1)
    platt = LogisticRegression(C=1e6, max_iter=1000).fit(z, train["y"])
    a, b = float(platt.coef_[0, 0]), float(platt.intercept_[0])
    clf = model.named_steps["clf"]
    clf.coef_ = clf.coef_ * a
    clf.intercept_ = clf.intercept_ * a + b
    return a, b


def val_figures(model, val: dict[str, np.ndarray]) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """ROC AUC and Brier score on the validation rows, overall and per input kind and difficulty."""
    from sklearn.metrics import brier_score_loss, roc_auc_score

    p = model.predict_proba(val["X"])[:, 1]
    out = {"val_roc_auc": roc_auc_score(val["y"], p), "val_brier": brier_score_loss(val["y"], p)}
    for kind in sorted(set(val["kind"])):
        sel = val["kind"] == kind
        out[f"val_roc_auc_{kind}"] = roc_auc_score(val["y"][sel], p[sel])
    benign = val["y"] == 0
    for hard, label in (("subtle", 1), ("lookalike", 0)):
        sel = (val["difficulty"] == hard) | (benign if label == 1 else val["y"] == 1)
        out[f"val_roc_auc_{hard}"] = roc_auc_score(val["y"][sel], p[sel])
    return {k: round(float(v), 4) for k, v in out.items()}


def export(model, out: Path, meta: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    onx = convert_sklearn(
        model, initial_types=[("features", FloatTensorType([None, len(FEATURE_NAMES)]))],
        options={id(model.named_steps["clf"]): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3},
    )
    for key, value in meta.items():
        prop = onx.metadata_props.add()
        prop.key, prop.value = key, value
    onx.doc_string = "Voice scam probability (calibrated) over sentence embedding + phrase cues; see docs/voice-model.md"
    onx.graph.name = VERSION.replace("-", "_")  # skl2onnx picks a random name; fixed, the file is byte-reproducible
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(onx.SerializeToString())


def main() -> None:
    """Build rows, fit on train, calibrate on val, export, verify against scikit-learn."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "models" / "voice" / f"{VERSION}.onnx")
    parser.add_argument("--asr-every", type=int, default=0, help="add a recognised row for every K-th transcript")
    args = parser.parse_args()

    encoder = load_encoder(threads=2)
    parts = {split: load_corpus(split) for split in ("train", "val")}
    print(f"{len(parts['train'])} train / {len(parts['val'])} val transcripts; voices {', '.join(TRAIN_VOICES)}")
    data = {split: cached_rows(split, rows, encoder, args.asr_every) for split, rows in parts.items()}
    search = fit_head(data["train"])
    model = search.best_estimator_
    print(f"ROC AUC on held-out kinds (cross-validated) {search.best_score_:.4f} with C={search.best_params_['clf__C']}")
    a, b = calibrate(model, data["train"])
    figures = val_figures(model, data["val"])
    print(json.dumps(figures))
    meta = {"version": VERSION, "features": str(len(FEATURE_NAMES)), "feature_set": "voice_features.v2",
            "encoder": "encoder", "encoder_sha256": encoder.sha256, "calibration": f"platt a={a:.5f} b={b:.5f}",
            "trained_on": f"{len(parts['train'])} transcripts, {len(data['train']['y'])} rows"}
    export(model, args.out, meta)
    if not (args.out.parent / "encoder").exists():  # the model finds its encoder beside it
        (args.out.parent / "encoder").symlink_to(Path(encoder.path).resolve(), target_is_directory=True)
    loaded = load_model(args.out)
    diff = float(np.max(np.abs(loaded.predict(data["val"]["X"]) - model.predict_proba(data["val"]["X"])[:, 1])))
    assert diff < 1e-4, f"ONNX and scikit-learn disagree by {diff}"
    report = {"version": VERSION, "sha256": loaded.sha256, "encoder_sha256": encoder.sha256,
              "rows": {s: len(d["y"]) for s, d in data.items()}, "transcripts": {s: len(r) for s, r in parts.items()},
              "cv_roc_auc_heldout_kinds": round(float(search.best_score_), 4),
              "cv_roc_auc_by_C": {str(c): round(float(v), 4) for c, v in
                                  zip(C_GRID, search.cv_results_["mean_test_score"])}, "C": search.best_params_["clf__C"],
              "platt": {"a": round(a, 5), "b": round(b, 5)}, **figures,
              "asr_every": args.asr_every, "seed": SEED,
              "onnx_max_abs_diff": diff}
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes, sha256 {loaded.sha256[:16]}…)")


if __name__ == "__main__":
    main()
