"""The voice scoring service without a broker: decoding and its refusals, features, the
sentence encoder, the shipped ONNX model on transcripts (scam, subtle scam, look-alike
benign call), mock mode, model checks, and one speech-recognised clip."""

from __future__ import annotations

import io
import os
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from app.dev.voice_clips import ClipStyle, synthesize_wav, tools_available
from app.services.voice.encoder import EMBED_DIM, windows
from app.services.voice.features import (
    FEATURE_NAMES,
    SAMPLE_RATE,
    AudioError,
    AudioLimits,
    acoustic_features,
    decode_audio,
    text_features,
)
from app.services.voice.model import (
    ModelError,
    ScoringDeps,
    Thresholds,
    load_asr,
    load_model,
    risk_level,
    score_clip,
)
from app.settings import get_settings
from tests.conftest import need

LIMITS = AudioLimits(max_seconds=600)
SCAM = ("This is the fraud department of your bank. Someone is using your card. Read me the one time password "
        "we just sent to your phone, and buy Google Play gift cards to secure your money. Do it immediately.")
BENIGN = ("Hi, this is Sarah from Doctor Patel's office. You have an appointment on Tuesday at ten in the "
          "morning. Please bring your insurance card. Have a great day.")


def _wav(samples: np.ndarray, rate: int = SAMPLE_RATE, fmt: str = "WAV", subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def _tone(seconds: float, rate: int = SAMPLE_RATE, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2).astype(np.float32)


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    return load_model(get_settings().voice_model_path)


@pytest.fixture(scope="module")
def deps(model) -> ScoringDeps:  # type: ignore[no-untyped-def]
    return ScoringDeps(model=model, asr=None, limits=LIMITS)


# --- decoding ---------------------------------------------------------------------------

def test_empty_file_is_refused() -> None:
    with pytest.raises(AudioError) as err:
        decode_audio(b"", LIMITS)
    assert err.value.code == "empty_audio" and "0 bytes" in err.value.message


def test_random_bytes_are_not_audio() -> None:
    data = np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    data = b"\x00" + data[1:]  # never an accidental MP3 frame sync
    with pytest.raises(AudioError) as err:
        decode_audio(data, LIMITS)
    assert err.value.code == "not_audio"


def test_wav_header_without_samples() -> None:
    data = _wav(np.zeros(0, dtype=np.float32))
    assert data[:4] == b"RIFF" and len(data) == 44
    with pytest.raises(AudioError) as err:
        decode_audio(data, LIMITS)
    assert err.value.code == "no_samples" and "WAV (PCM)" in err.value.message


def test_two_hours_of_silence_is_refused_from_the_header_before_decoding() -> None:
    # FLAC keeps two hours of silence small; the length is judged from the header.
    data = _wav(np.zeros(2 * 3600 * 8000, dtype=np.int16), rate=8000, fmt="FLAC")
    started = time.perf_counter()
    with pytest.raises(AudioError) as err:
        decode_audio(data, AudioLimits(max_seconds=600))
    assert err.value.code == "audio_too_long" and "7,200.0 s" in err.value.message
    assert time.perf_counter() - started < 1.0


def test_unsupported_codec_names_the_codec_and_the_missing_decoder() -> None:
    need(not _ffmpeg(), "a machine without ffmpeg (with it, AAC decodes)")
    m4a = struct.pack(">I", 24) + b"ftypM4A " + b"\x00\x00\x00\x00" + b"M4A isom" + b"\x00" * 200
    with pytest.raises(AudioError) as err:
        decode_audio(m4a, LIMITS)
    assert err.value.code == "unsupported_codec"
    assert "MP4/M4A (AAC or ALAC)" in err.value.message and "ffmpeg is not installed" in err.value.message


def _ffmpeg() -> bool:
    from app.services.voice.features import ffmpeg_available

    return ffmpeg_available()


def test_silent_and_too_short_clips_are_refused() -> None:
    with pytest.raises(AudioError) as err:
        decode_audio(_wav(np.zeros(SAMPLE_RATE * 3, dtype=np.float32)), LIMITS)
    assert err.value.code == "silent_audio"
    with pytest.raises(AudioError) as err:
        decode_audio(_wav(_tone(0.2)), LIMITS)
    assert err.value.code == "audio_too_short"


@pytest.mark.parametrize("fmt,subtype,rate,channels", [("WAV", "PCM_16", 44100, 2), ("FLAC", "PCM_16", 8000, 1),
                                                      ("OGG", "VORBIS", 22050, 1), ("MP3", "MPEG_LAYER_III", 16000, 1)])
def test_supported_formats_decode_to_mono_16k(fmt: str, subtype: str, rate: int, channels: int) -> None:
    tone = _tone(2.0, rate)
    data = _wav(np.stack([tone] * channels, axis=1) if channels > 1 else tone, rate, fmt, subtype)
    samples = decode_audio(data, LIMITS)
    assert samples.dtype == np.float32
    assert abs(samples.size / SAMPLE_RATE - 2.0) < 0.1


# --- features ---------------------------------------------------------------------------

def test_acoustic_features_are_complete() -> None:
    # Their speed is measured by bench.voice (acoustic_per_10s), not by a wall clock here.
    clip = _tone(10.0)
    features = acoustic_features(clip)
    assert features.values["has_audio"] == 1.0 and abs(features.duration_s - 10.0) < 0.01
    assert acoustic_features(None).values["has_audio"] == 0.0


def test_text_cues_match_the_phrases_heard() -> None:
    signals = text_features("Please read me the one-time passcode and pay with Steam cards right now, IRS here.")
    assert signals.matches["otp"] == ["one time passcode"]
    assert signals.matches["gift_card"] == ["steam cards"]
    assert signals.matches["urgency"] == ["right now"]
    assert "irs" in signals.matches["institution"]
    assert text_features("See you at dinner on Friday.").matches == {}


def test_transcripts_are_cut_into_sentence_windows() -> None:
    text = "One two three. " * 20 + "word " * 120
    parts = windows(text, max_words=48)
    assert all(len(p.split()) <= 48 for p in parts)
    assert " ".join(parts).split() == text.split()  # nothing lost, order kept
    assert windows("Short call. Bye.") == ["Short call. Bye."]


def test_the_embedding_is_mean_and_max_of_normalised_windows(model) -> None:  # type: ignore[no-untyped-def]
    emb = model.encoder.embed("Please read me the code. " * 30)
    assert emb.shape == (2 * EMBED_DIM,) and emb.dtype == np.float32
    assert abs(float(np.linalg.norm(emb[:EMBED_DIM])) - 1.0) < 1e-4
    assert not model.encoder.embed(None).any()
    close = model.encoder.embed_windows(["read me the code we texted you", "tell me the number in the text message",
                                         "see you at dinner on Friday"])
    assert float(close[0] @ close[1]) > float(close[0] @ close[2])  # meaning, not shared words


def test_a_model_whose_encoder_differs_is_refused(tmp_path: Path) -> None:
    import shutil

    import onnx

    settings_model = Path(get_settings().voice_model_path)
    onx = onnx.load(str(settings_model))
    for prop in onx.metadata_props:
        if prop.key == "encoder_sha256":
            prop.value = "0" * 64
    (tmp_path / "m.onnx").write_bytes(onx.SerializeToString())
    with pytest.raises(ModelError, match="sentence encoder file not found"):
        load_model(tmp_path / "m.onnx")
    shutil.copytree(settings_model.parent / "encoder", tmp_path / "encoder")
    with pytest.raises(ModelError, match="was trained with encoder sha256 000000000000"):
        load_model(tmp_path / "m.onnx")


# --- scoring ----------------------------------------------------------------------------

def test_scam_transcript_scores_high_with_reasons(deps: ScoringDeps) -> None:
    result = score_clip(deps, None, SCAM)
    assert result["risk_level"] in ("HIGH", "CRITICAL"), result
    joined = " | ".join(result["reasons"])
    assert '"one time password"' in joined and "gift cards" in joined
    assert 0 <= result["confidence"] <= 1 and result["mock"] is False
    assert result["model_version"] == "scam-v2" and len(result["model_sha256"]) == 64
    assert result["timings_ms"]["encoder_ms"] > 0


def test_benign_transcript_scores_low(deps: ScoringDeps) -> None:
    result = score_clip(deps, None, BENIGN)
    assert result["risk_level"] == "LOW", result
    assert result["scam_score"] < 0.4


def test_a_scam_without_the_usual_words_scores_high(deps: ScoringDeps) -> None:
    # No gift card, code or threat words: the sentence encoder carries it, and the reason says so.
    text = ("Hi, it's your account team. Somebody got hold of your details, so we've opened a new account for you. "
            "Please move all of your savings into it this evening from your app, and don't mention it at the branch.")
    result = score_clip(deps, None, text)
    assert result["risk_level"] in ("HIGH", "CRITICAL"), result


def test_a_real_fraud_team_call_with_scam_words_scores_low(deps: ScoringDeps) -> None:
    text = ("Hello, this is the fraud department at your bank. We will never ask for your PIN or a code. We stopped a "
            "card payment in another city this morning; if it was not you, we will send a new card. To check this "
            "call is genuine, ring the number on the back of your card.")
    result = score_clip(deps, None, text)
    assert result["risk_level"] == "LOW", result
    assert any("fraud department" in reason for reason in result["reasons"])  # the phrase families stay as reasons


def test_nothing_to_score(deps: ScoringDeps) -> None:
    with pytest.raises(ValueError):
        score_clip(deps, None, "   ")


def test_risk_levels_follow_the_thresholds() -> None:
    t = Thresholds(0.3, 0.6, 0.8)
    assert [risk_level(s, t) for s in (0.0, 0.3, 0.6, 0.8, 1.0)] == ["LOW", "MEDIUM", "HIGH", "CRITICAL", "CRITICAL"]


def test_mock_mode_marks_results_and_still_rejects_bad_audio() -> None:
    deps = ScoringDeps(model=None, asr=None, mock=True)
    result = score_clip(deps, None, "anything")
    assert result["mock"] is True and result["risk_level"] in ("LOW", "MEDIUM", "HIGH", "CRITICAL")
    with pytest.raises(AudioError):
        score_clip(deps, b"", None)


def test_a_model_of_another_width_is_refused(tmp_path: Path) -> None:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression().fit(np.random.default_rng(0).normal(size=(20, 3)), [0, 1] * 10)
    onx = convert_sklearn(clf, initial_types=[("features", FloatTensorType([None, 3]))])
    path = tmp_path / "other.onnx"
    path.write_bytes(onx.SerializeToString())
    with pytest.raises(ModelError, match=f"takes 3 features; this version computes {len(FEATURE_NAMES)}"):
        load_model(path)
    with pytest.raises(ModelError, match="not found"):
        load_model(tmp_path / "missing.onnx")


def test_speech_recognition_runs_offline_on_the_bundled_model(model) -> None:  # type: ignore[no-untyped-def]
    need(tools_available(), "espeak-ng and sox")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    asr = load_asr("", "int8", 2)
    deps = ScoringDeps(model=model, asr=asr, limits=LIMITS)
    result = score_clip(deps, synthesize_wav(SCAM, ClipStyle(voice="en-us", speed=155)), None)
    assert result["transcript_source"] == "asr"
    assert "password" in result["transcript"].lower()
    assert result["risk_level"] in ("HIGH", "CRITICAL"), result
