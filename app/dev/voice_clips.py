"""Synthetic call recordings from text: espeak-ng speaks, sox shapes the line, numpy adds noise.

Used by the model's training and evaluation scripts, the tests and the benchmark to
make clips whose words are known. Deterministic for a given text, voice and seed.
"""

from __future__ import annotations

import io
import logging
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

logger = logging.getLogger(__name__)

#: espeak-ng voices (language + variant) and speeds used to train the shipped model.
TRAIN_VOICES = ("en-us", "en-gb", "en-gb-x-rp+f3", "en-029+m3", "en-us+f2", "en-gb-x-gbclan+m1")
TRAIN_SPEEDS = (135, 155, 170)
#: Voices and speeds the held-out evaluation uses, never seen in training.
HELDOUT_VOICES = ("en-gb-scotland+f4", "en-us-nyc+m5", "en-gb-x-gbcwmd+f1")
HELDOUT_SPEEDS = (145, 185)

SUBPROCESS_TIMEOUT = 60.0


def tools_available() -> bool:
    """True when espeak-ng and sox are installed."""
    return shutil.which("espeak-ng") is not None and shutil.which("sox") is not None


@dataclass(frozen=True)
class ClipStyle:
    """How a clip sounds: espeak voice, words per minute, pitch, phone line, noise."""

    voice: str = "en-us"
    speed: int = 160
    pitch: int = 50
    telephone: bool = False
    noise_db: float = -45.0
    seed: int = 0


def synthesize_wav(text: str, style: ClipStyle = ClipStyle()) -> bytes:
    """A 16 kHz mono 16-bit WAV of ``text`` spoken in ``style``."""
    with tempfile.TemporaryDirectory(prefix="voice-clip-") as tmp:
        raw, shaped = Path(tmp) / "raw.wav", Path(tmp) / "shaped.wav"
        subprocess.run(
            ["espeak-ng", "-v", style.voice, "-s", str(style.speed), "-p", str(style.pitch), "-w", str(raw), text],
            check=True, capture_output=True, timeout=SUBPROCESS_TIMEOUT,
        )
        effects = ["rate", "16000"]
        if style.telephone:
            effects += ["highpass", "300", "lowpass", "3400"]
        # A short lead-in and tail of room tone, as a real recording has.
        effects += ["pad", "0.3", "0.4", "gain", "-n", "-3"]
        subprocess.run(["sox", "-D", str(raw), "-c", "1", "-b", "16", str(shaped), *effects],
                       check=True, capture_output=True, timeout=SUBPROCESS_TIMEOUT)
        samples, rate = sf.read(shaped, dtype="float32")
    rng = np.random.default_rng(style.seed)
    noise = rng.normal(0.0, 10 ** (style.noise_db / 20), samples.shape).astype(np.float32)
    mixed = np.clip(samples + noise, -1.0, 1.0)
    buf = io.BytesIO()
    sf.write(buf, mixed, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def style_for(index: int, voices: tuple[str, ...], speeds: tuple[int, ...], seed: int) -> ClipStyle:
    """A varied but deterministic style for the ``index``-th clip of a set."""
    rng = np.random.default_rng(seed * 100_003 + index)
    return ClipStyle(
        voice=voices[int(rng.integers(len(voices)))],
        speed=int(speeds[int(rng.integers(len(speeds)))] + rng.integers(-5, 6)),
        pitch=int(rng.integers(35, 70)),
        telephone=bool(rng.random() < 0.5),
        noise_db=float(rng.uniform(-55, -38)),
        seed=seed * 7919 + index,
    )
