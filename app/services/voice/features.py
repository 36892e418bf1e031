"""Audio decoding and the feature vector of the voice scam model.

Everything here is plain numpy/soundfile and deterministic, so the training script, the
Celery task and the standalone remote worker compute exactly the same features for the
same clip. The model's input is ``FEATURE_NAMES``: the phrase-family cues of the
transcript, two flags, and the transcript's sentence embedding (``app.services.voice.
encoder``); a model dropped in by an operator must take a float tensor of that width
(see docs/voice.md). The acoustic features are computed for the readable reasons (fast
speech, no pauses) and the duration; the model does not read them (docs/voice-model.md
says why).
"""

from __future__ import annotations

import io
import logging
import math
import re
import shutil
import subprocess
from dataclasses import dataclass, field

import numpy as np
import soundfile as sf
from scipy.fft import dct
from scipy.signal import resample_poly

from app.services.voice.encoder import EMBEDDING_NAMES

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
_FRAME = 400  # 25 ms at 16 kHz
_HOP = 160  # 10 ms
_NFFT = 512
_N_MELS = 40
_N_MFCC = 13


class AudioError(Exception):
    """The clip cannot be scored; ``code`` is machine-readable, the message says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


@dataclass(frozen=True)
class AudioLimits:
    """What a clip must satisfy before it is scored."""

    max_bytes: int = 25 * 1024 * 1024
    max_seconds: float = 600.0
    min_seconds: float = 0.5
    silence_dbfs: float = -55.0
    ffmpeg_timeout: float = 60.0


# --- decoding -------------------------------------------------------------------------

_WAV_CODECS = {
    0x0001: "PCM", 0x0003: "IEEE float", 0x0006: "A-law", 0x0007: "mu-law", 0x0002: "MS ADPCM",
    0x0011: "IMA ADPCM", 0x0031: "GSM 6.10", 0x0055: "MPEG Layer 3", 0x0092: "Dolby AC-3",
    0x00FF: "AAC", 0x1610: "AAC (HE)", 0x0161: "Windows Media Audio", 0xFFFE: "extensible",
}


def sniff_format(data: bytes) -> str:
    """Name the container/codec the bytes start with, or ``unknown``."""
    if len(data) >= 12 and data[:4] in (b"RIFF", b"RF64") and data[8:12] == b"WAVE":
        tag = _wav_format_tag(data)
        codec = _WAV_CODECS.get(tag, f"format tag 0x{tag:04X}") if tag is not None else "unknown codec"
        return f"WAV ({codec})"
    if data[:4] == b"fLaC":
        return "FLAC"
    if data[:4] == b"OggS":
        return "Ogg"
    if data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF and (data[1] & 0xE0) == 0xE0):
        return "MP3"
    if len(data) >= 12 and data[4:8] == b"ftyp":
        return "MP4/M4A (AAC or ALAC)"
    if data[:6] == b"#!AMR\n" or data[:9] == b"#!AMR-WB\n":
        return "AMR"
    if data[:4] == b"\x1aE\xdf\xa3":
        return "WebM/Matroska (Opus or Vorbis)"
    if data[:4] == b"FORM":
        return "AIFF"
    return "unknown"


def _wav_format_tag(data: bytes) -> int | None:
    pos = 12
    while pos + 8 <= len(data):
        chunk, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        if chunk == b"fmt " and pos + 10 <= len(data):
            return int.from_bytes(data[pos + 8:pos + 10], "little")
        pos += 8 + size + (size & 1)
    return None


def ffmpeg_available() -> bool:
    """True when an ``ffmpeg`` binary is on PATH (extra codecs: AAC, AMR, WebM, …)."""
    return shutil.which("ffmpeg") is not None


def _decode_ffmpeg(data: bytes, limits: AudioLimits) -> np.ndarray:
    # Decoding stops one second past the limit: enough to know a clip is too long
    # without decoding hours of it.
    argv = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-i", "pipe:0",
            "-t", str(limits.max_seconds + 1), "-ac", "1", "-ar", str(SAMPLE_RATE), "-f", "f32le", "pipe:1"]
    try:
        proc = subprocess.run(argv, input=data, capture_output=True, timeout=limits.ffmpeg_timeout, check=False)
    except subprocess.TimeoutExpired:
        raise AudioError("decode_timeout", f"ffmpeg did not decode the clip within {limits.ffmpeg_timeout:g} s") from None
    if proc.returncode != 0:
        detail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no detail"]
        raise AudioError("undecodable_audio", f"ffmpeg could not decode the clip: {detail[0][:200]}")
    return np.frombuffer(proc.stdout, dtype=np.float32).copy()


def decode_audio(data: bytes, limits: AudioLimits) -> np.ndarray:
    """Bytes of WAV/FLAC/OGG/MP3 (other codecs through ffmpeg when installed) → mono 16 kHz float32.

    Raises ``AudioError`` with a specific reason for an empty file, bytes that are not
    audio, an unsupported codec, a header with no samples, a clip over or under the
    length limits, and a silent clip. The length is read from the header first, so an
    over-long clip is refused before it is decoded.
    """
    if not data:
        raise AudioError("empty_audio", "the audio file is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise AudioError("audio_too_large", f"the audio file is {len(data):,} bytes, over the limit of {limits.max_bytes:,}")
    kind = sniff_format(data)
    try:
        info = sf.info(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError, TypeError):
        info = None
    if info is None:
        if kind == "unknown":
            raise AudioError("not_audio", "the bytes are not a recognised audio format (WAV, FLAC, OGG, MP3)")
        if ffmpeg_available():
            samples = _decode_ffmpeg(data, limits)
            return _check(samples, limits, kind)
        if kind.startswith("WAV") and kind.endswith("(PCM)"):
            raise AudioError("corrupt_audio", f"the {kind} file is damaged and cannot be read")
        raise AudioError(
            "unsupported_codec",
            f"{kind} audio is not supported: no decoder for it is available (ffmpeg is not installed); "
            "send WAV, FLAC, OGG Vorbis/Opus or MP3",
        )
    if info.frames <= 0 or info.samplerate <= 0:
        raise AudioError("no_samples", f"the {kind} file has a header but no audio samples")
    duration = info.frames / info.samplerate
    if duration > limits.max_seconds:
        raise AudioError("audio_too_long", f"the clip is {duration:,.1f} s long, over the limit of {limits.max_seconds:g} s")
    try:
        raw, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioError("corrupt_audio", f"the {kind} file is damaged: {exc}") from None
    if raw.shape[0] == 0:
        raise AudioError("no_samples", f"the {kind} file has a header but no audio samples")
    mono = raw.mean(axis=1)
    if rate != SAMPLE_RATE:
        g = math.gcd(int(rate), SAMPLE_RATE)
        mono = resample_poly(mono, SAMPLE_RATE // g, int(rate) // g).astype(np.float32)
    return _check(mono.astype(np.float32, copy=False), limits, kind)


def _check(samples: np.ndarray, limits: AudioLimits, kind: str) -> np.ndarray:
    if samples.size == 0:
        raise AudioError("no_samples", f"the {kind} file has a header but no audio samples")
    duration = samples.size / SAMPLE_RATE
    if duration > limits.max_seconds:
        raise AudioError("audio_too_long", f"the clip is over the limit of {limits.max_seconds:g} s")
    if duration < limits.min_seconds:
        raise AudioError("audio_too_short", f"the clip is {duration:.2f} s long, under the minimum of {limits.min_seconds:g} s")
    if not np.all(np.isfinite(samples)):
        raise AudioError("corrupt_audio", "the clip contains invalid (NaN or infinite) samples")
    peak_db = _dbfs(float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))))
    if peak_db < limits.silence_dbfs:
        raise AudioError("silent_audio", f"the clip is silent (level {peak_db:.0f} dBFS, below {limits.silence_dbfs:g} dBFS)")
    return samples


def _dbfs(rms: float) -> float:
    return 20 * math.log10(max(rms, 1e-10))


# --- acoustic features ------------------------------------------------------------------

def _mel_filterbank() -> np.ndarray:
    def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0)

    def mel_to_hz(mel: np.ndarray) -> np.ndarray:
        return 700.0 * (10 ** (mel / 2595.0) - 1.0)

    mels = np.linspace(hz_to_mel(20.0), hz_to_mel(SAMPLE_RATE / 2), _N_MELS + 2)
    bins = np.floor((_NFFT + 1) * mel_to_hz(mels) / SAMPLE_RATE).astype(int)
    fb = np.zeros((_N_MELS, _NFFT // 2 + 1), dtype=np.float32)
    for m in range(1, _N_MELS + 1):
        left, center, right = bins[m - 1], bins[m], bins[m + 1]
        for k in range(left, center):
            fb[m - 1, k] = (k - left) / max(1, center - left)
        for k in range(center, right):
            fb[m - 1, k] = (right - k) / max(1, right - center)
    return fb


_MEL = _mel_filterbank()
_WINDOW = np.hanning(_FRAME).astype(np.float32)

ACOUSTIC_NAMES: list[str] = (
    ["has_audio", "duration_log", "level_dbfs", "energy_std_db", "pause_ratio", "pause_count_per_min",
     "longest_pause_s", "onsets_per_s", "spectral_centroid_khz", "zero_crossing_rate"]
    + [f"mfcc{i}_mean" for i in range(_N_MFCC)]
    + [f"mfcc{i}_std" for i in range(_N_MFCC)]
)


@dataclass
class Acoustics:
    """The acoustic feature values plus the few a person can read (for reasons)."""

    values: dict[str, float]
    duration_s: float = 0.0
    speech_s: float = 0.0
    pause_ratio: float = 0.0


def acoustic_features(samples: np.ndarray | None) -> Acoustics:
    """Log-mel MFCC statistics, energy, pauses and an onset rate of a 16 kHz mono clip.

    About a millisecond per second of audio in numpy. ``None`` (transcript only) gives
    all zeros with ``has_audio`` = 0, the model's signal that acoustics are absent.
    """
    if samples is None or samples.size < _FRAME:
        return Acoustics(values={name: 0.0 for name in ACOUSTIC_NAMES})
    x = samples.astype(np.float32, copy=False)
    n_frames = 1 + (x.size - _FRAME) // _HOP
    idx = np.arange(_FRAME)[None, :] + _HOP * np.arange(n_frames)[:, None]
    frames = x[idx] * _WINDOW
    spectrum = np.abs(np.fft.rfft(frames, n=_NFFT)) ** 2
    energy_db = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-10)
    # Speech is what stands clearly above the noise floor and within 35 dB of the loud
    # frames: a threshold independent of recording level and of line noise.
    loud = float(np.percentile(energy_db, 95))
    floor = float(np.percentile(energy_db, 5))
    voiced = energy_db > max(loud - 35.0, min(floor + 10.0, loud - 15.0), -75.0)
    pause_ratio = 1.0 - float(voiced.mean())
    pauses, longest, run = 0, 0, 0
    for v in voiced:
        if not v:
            run += 1
        else:
            if run >= 20:  # 200 ms of quiet is a pause, shorter is a stop consonant
                pauses += 1
                longest = max(longest, run)
            run = 0
    duration = x.size / SAMPLE_RATE
    speech_s = float(voiced.sum()) * _HOP / SAMPLE_RATE
    onsets = int(np.sum(voiced[1:] & ~voiced[:-1]))
    mel = np.log(spectrum @ _MEL.T + 1e-10)
    mfcc = dct(mel, type=2, axis=1, norm="ortho")[:, :_N_MFCC]
    sel = mfcc[voiced] if voiced.sum() >= 5 else mfcc
    freqs = np.linspace(0, SAMPLE_RATE / 2, spectrum.shape[1])
    power = spectrum[voiced] if voiced.sum() >= 5 else spectrum
    centroid = float(np.mean((power @ freqs) / (power.sum(axis=1) + 1e-10))) / 1000.0
    zcr = float(np.mean(np.abs(np.diff(np.signbit(x).astype(np.int8)))))
    values = {
        "has_audio": 1.0,
        "duration_log": math.log1p(duration),
        "level_dbfs": _dbfs(float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))) / 10.0,
        "energy_std_db": float(np.std(energy_db[voiced])) / 10.0 if voiced.any() else 0.0,
        "pause_ratio": pause_ratio,
        "pause_count_per_min": pauses / max(duration / 60.0, 1e-3) / 10.0,
        "longest_pause_s": longest * _HOP / SAMPLE_RATE,
        "onsets_per_s": onsets / max(duration, 1e-3),
        "spectral_centroid_khz": centroid,
        "zero_crossing_rate": zcr * 10.0,
    }
    means, stds = sel.mean(axis=0), sel.std(axis=0)
    for i in range(_N_MFCC):
        values[f"mfcc{i}_mean"] = float(means[i]) / 10.0
        values[f"mfcc{i}_std"] = float(stds[i]) / 10.0
    return Acoustics(values=values, duration_s=duration, speech_s=speech_s, pause_ratio=pause_ratio)


# --- text features ----------------------------------------------------------------------

@dataclass(frozen=True)
class Cue:
    """A family of phrases that is a known scam signal, and how a reason names it."""

    name: str
    reason: str
    pattern: re.Pattern[str]


def _cue(name: str, reason: str, *alternatives: str) -> Cue:
    return Cue(name, reason, re.compile(r"\b(?:" + "|".join(alternatives) + r")\b", re.IGNORECASE))


#: Tolerant to the usual speech-recognition slips (hyphens, spacing, plural).
CUES: tuple[Cue, ...] = (
    _cue("otp", "asks for a one-time code or PIN",
         r"one[- ]?time (?:pass ?(?:word|code)s?|codes?|pins?)", r"verification codes?", r"security codes?",
         r"confirmation codes?", r"(?:six|6)[- ]digit (?:verification )?codes?", r"pin numbers?", r"your pin",
         r"(?:the )?codes? (?:we|i) (?:just )?(?:sent|texted)", r"access codes?", r"codes? on the back"),
    _cue("gift_card", "asks for payment in gift cards",
         r"gift ?cards?", r"itunes(?: cards?)?", r"google play(?: cards?)?", r"steam cards?", r"prepaid (?:visa |debit )?cards?",
         r"scratch (?:off )?the back"),
    _cue("payment", "asks for an untraceable payment",
         r"wire transfers?", r"bitcoin", r"crypto ?currency", r"western union", r"money ?gram", r"zelle", r"cash app",
         r"(?:secure|safe) (?:wallet|account)", r"processing fee", r"delivery fee", r"tax fee"),
    _cue("suspension", "claims an account is suspended, locked or frozen",
         r"(?:suspended|suspension|locked|frozen|deactivated|blocked)", r"shut off", r"disconnected",
         r"cut off", r"stop working"),
    _cue("urgency", "pressures for immediate action",
         r"immediately", r"right (?:now|away)", r"within (?:the next )?(?:an? |one |the )?(?:hour|(?:\w+ )?(?:minutes|hours))",
         r"final notice", r"too late", r"don'?t hang up", r"do not hang up", r"time is running out", r"only (?:open )?today",
         r"must be (?:resolved|done|made) (?:today|now)", r"twenty[- ]four hours", r"24 hours", r"urgent(?:ly)?"),
    _cue("institution", "claims to call from a government agency or the bank's fraud team",
         r"internal revenue", r"irs", r"social security administration", r"medicare", r"homeland security",
         r"sheriff'?s office", r"customs", r"fraud department", r"security (?:team|department)", r"federal",
         r"tax office", r"disconnection department", r"account protection", r"prize center", r"refund department"),
    _cue("threat", "threatens arrest, legal action or penalties",
         r"arrest(?:ed)?", r"warrants?", r"lawsuit", r"legal (?:action|case)", r"jail", r"police", r"penalt(?:y|ies)",
         r"money laundering", r"illegal"),
    _cue("secrecy", "asks to keep the call secret",
         r"don'?t tell", r"do not tell", r"between us", r"confidential", r"keep it to yourself",
         r"(?:don'?t|do not) discuss"),
    _cue("remote_access", "asks to install remote-access software",
         r"remote access", r"any ?desk", r"team ?viewer", r"screen sharing", r"connect to your (?:screen|computer)",
         r"install (?:an?|our|the)\b", r"download (?:an?|our|the)\b"),
    _cue("personal_info", "asks for personal or banking details",
         r"social security number", r"date of birth", r"card number", r"account number", r"(?:banking )?password",
         r"maiden name", r"expiry date", r"bank details", r"log in to your (?:online )?bank"),
    _cue("prize", "announces a prize that needs a fee",
         r"you (?:have )?won", r"winner", r"prize", r"lottery", r"sweepstakes", r"congratulations"),
    _cue("too_good", "promises guaranteed or risk-free returns",
         r"guaranteed returns?", r"risk[- ]free", r"doubles? your money", r"never loses"),
)

#: Phrases of a legitimate caller that make a cue less telling.
_REASSURANCE = re.compile(
    r"\b(?:never ask(?: you)? for|nothing you need to tell|no action is needed|number on the back of your card)\b",
    re.IGNORECASE,
)

TEXT_NAMES: list[str] = ["has_transcript", "reassurance"] + [f"cue_{c.name}" for c in CUES] + ["cue_groups"]

#: The model's input, in order: has_audio, the cues, the sentence embedding (mean, max).
FEATURE_NAMES: list[str] = ["has_audio"] + TEXT_NAMES + EMBEDDING_NAMES

_WORD = re.compile(r"[a-z0-9']+")


def normalize_text(text: str) -> str:
    """Lower-case words only, so a transcript and its ASR version hash alike."""
    return " ".join(_WORD.findall(text.lower().replace("-", " ")))


@dataclass
class TextSignals:
    """Text feature values and the phrases each fired cue matched."""

    values: dict[str, float]
    matches: dict[str, list[str]] = field(default_factory=dict)
    words: int = 0


def text_features(transcript: str | None) -> TextSignals:
    """Counts of each phrase family (log1p), of reassurance phrases, and the phrases heard."""
    values = {name: 0.0 for name in TEXT_NAMES}
    if not transcript or not transcript.strip():
        return TextSignals(values=values)
    words = normalize_text(transcript).split()
    values["has_transcript"] = 1.0
    values["reassurance"] = float(len(_REASSURANCE.findall(transcript)))
    matches: dict[str, list[str]] = {}
    spaced = " ".join(transcript.replace("-", " ").split())
    for cue in CUES:
        found = [m.group(0).lower() for m in cue.pattern.finditer(spaced)]
        values[f"cue_{cue.name}"] = math.log1p(len(found))
        if found:
            matches[cue.name] = list(dict.fromkeys(found))
    values["cue_groups"] = len(matches) / 4.0
    return TextSignals(values=values, matches=matches, words=len(words))


def feature_vector(acoustics: Acoustics, text: TextSignals, embedding: np.ndarray) -> np.ndarray:
    """The model input row, in ``FEATURE_NAMES`` order (``embedding``: ``TextEncoder.embed``)."""
    head = [acoustics.values["has_audio"]] + [text.values[name] for name in TEXT_NAMES]
    return np.concatenate([np.asarray(head, dtype=np.float32), embedding.astype(np.float32, copy=False)])
