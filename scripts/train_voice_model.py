"""Train the shipped voice scam model and export it to ONNX (models/voice/scam-v1.onnx).

Reproducible: the corpus (data/voice/transcripts.jsonl) is fixed, every clip is
synthesized with a seeded voice/speed/pitch/line/noise choice from the *training*
voices only, speech recognition is deterministic (greedy), and the classifier's
search is seeded. Only the ``train`` split is used; ``scripts/evaluate_voice_model.py``
measures the held-out split with voices and speeds never used here.

Each training transcript gives four rows, so the model learns all three ways a call
arrives: clip 1 with its true transcript, clips 1 and 2 with their recognised
(imperfect) transcripts, and the transcript alone without audio.

    .venv/bin/python scripts/train_voice_model.py [--out models/voice/scam-v1.onnx]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from voice_data import ROOT, LIMITS, AsrCache, clip, load_corpus

from app.dev.voice_clips import TRAIN_SPEEDS, TRAIN_VOICES, style_for
from app.services.voice.model import features_for, load_model
from app.services.voice.features import FEATURE_NAMES, decode_audio

SEED = 7
VERSION = "scam-v1"


def build_rows(rows: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Feature matrix, labels and group ids (the transcript) of the training rows."""
    cache = AsrCache("train")
    X, y, groups = [], [], []
    started = time.monotonic()
    for n, row in enumerate(rows):
        label = 1 if row["label"] == "scam" else 0
        for k in range(2):
            wav = clip(row["text"], style_for(n * 2 + k, TRAIN_VOICES, TRAIN_SPEEDS, SEED))
            samples = decode_audio(wav, LIMITS)
            heard = cache.transcribe(wav)
            if k == 0:
                X.append(features_for(samples, row["text"]))
                y.append(label)
                groups.append(n)
            X.append(features_for(samples, heard))
            y.append(label)
            groups.append(n)
        X.append(features_for(None, row["text"]))
        y.append(label)
        groups.append(n)
        if n % 50 == 49:
            cache.save()
            print(f"  {n + 1}/{len(rows)} transcripts, {time.monotonic() - started:.0f} s", flush=True)
    cache.save()
    return np.asarray(X, dtype=np.float32), np.asarray(y), np.asarray(groups)


def main() -> None:
    """Build rows, pick the regularisation by grouped cross-validation, fit, export, verify."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, GroupKFold
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "models" / "voice" / f"{VERSION}.onnx")
    args = parser.parse_args()

    rows = load_corpus("train")
    print(f"training on {len(rows)} transcripts; voices {', '.join(TRAIN_VOICES)}; speeds {TRAIN_SPEEDS}")
    X, y, groups = build_rows(rows)
    pipe = Pipeline([
        ("scale", StandardScaler()),
        ("clf", LogisticRegression(max_iter=5000, class_weight="balanced", random_state=SEED)),
    ])
    search = GridSearchCV(pipe, {"clf__C": [0.003, 0.01, 0.03, 0.1]}, scoring="roc_auc",
                          cv=GroupKFold(n_splits=5), n_jobs=1)
    search.fit(X, y, groups=groups)
    model = search.best_estimator_
    print(f"cross-validated ROC AUC {search.best_score_:.4f} with C={search.best_params_['clf__C']}")

    onx = convert_sklearn(
        model, initial_types=[("features", FloatTensorType([None, len(FEATURE_NAMES)]))],
        options={id(model.named_steps["clf"]): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3},
    )
    meta = {"version": VERSION, "features": str(len(FEATURE_NAMES)), "feature_set": "voice_features.v1",
            "trained_on": f"{len(rows)} transcripts, {len(y)} rows", "cv_roc_auc": f"{search.best_score_:.4f}"}
    for key, value in meta.items():
        prop = onx.metadata_props.add()
        prop.key, prop.value = key, value
    onx.doc_string = "Voice scam score over acoustic + transcript features; see docs/voice-model.md"
    onx.graph.name = VERSION.replace("-", "_")  # skl2onnx picks a random name; fixed, the file is byte-reproducible
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(onx.SerializeToString())

    loaded = load_model(args.out)
    diff = float(np.max(np.abs(loaded.predict(X) - model.predict_proba(X)[:, 1])))
    assert diff < 1e-4, f"ONNX and scikit-learn disagree by {diff}"
    report = {"version": VERSION, "sha256": loaded.sha256, "rows": int(len(y)), "transcripts": len(rows),
              "cv_roc_auc": round(float(search.best_score_), 4), "C": search.best_params_["clf__C"],
              "train_voices": list(TRAIN_VOICES), "train_speeds": list(TRAIN_SPEEDS), "seed": SEED,
              "onnx_max_abs_diff": diff}
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes, sha256 {loaded.sha256[:16]}…)")


if __name__ == "__main__":
    main()
