"""The independent evaluation set of the voice scam model: hand-written dialogues
(data/voice/eval/calls.txt) spoken as two-voice phone calls in voices, speeds and line
processing that training never uses.

Synthesis differs from training (app.dev.voice_clips, white noise, a 300–3400 Hz
high/low-pass on half the clips, voices ``TRAIN_VOICES`` at 135/155/170 wpm) on every
axis: each side of the call has its own espeak-ng voice, from 8 accents × 16 voice
variants none of which training uses, at 120–190 wpm away from the training speeds;
each turn has its own level (±6 dB); a third of the calls go through a phone line
(8 kHz µ-law, a 250–3600 Hz band-pass, compression, brown noise at 18–28 dB SNR);
the rest get pink room noise. Deterministic per call id.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from voice_data import ROOT

CALLS = ROOT / "data" / "voice" / "eval" / "calls.txt"
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbcwmd", "en-us-nyc", "en-gb-x-rp", "en-029", "en-gb-x-gbclan")
VARIANTS = ("m4", "m6", "m7", "f5", "klatt2", "klatt4", "steph", "andy", "annie", "michel", "david", "linda",
            "anika", "edward", "shelby", "zac")
SPEEDS = (120, 126, 143, 147, 178, 184, 190)
PHONE_EVERY = 3  # every third call goes through the phone line


@dataclass(frozen=True)
class Call:
    id: str
    label: str
    kind: str
    difficulty: str
    turns: tuple[tuple[str, str], ...]  # (speaker "C" or "R", text)

    @property
    def text(self) -> str:
        return " ".join(t for _, t in self.turns)


def load_calls(path: Path = CALLS) -> list[Call]:
    """Parse the dialogue file (see its header)."""
    calls: list[Call] = []
    head: list[str] | None = None
    turns: list[tuple[str, str]] = []
    for line in path.read_text().splitlines() + ["=== end"]:
        if line.startswith("==="):
            if head:
                calls.append(Call(head[0], head[1], head[2], head[3], tuple(turns)))
            head = [p.strip() for p in line[3:].split("|")]
            turns = []
        elif line[:2] in ("C:", "R:"):
            turns.append((line[0], line[2:].strip()))
    return calls


def _rng(call_id: str) -> np.random.Generator:
    return np.random.default_rng(int(hashlib.sha256(call_id.encode()).hexdigest()[:12], 16))


def _speak(text: str, voice: str, speed: int, pitch: int, tmp: Path) -> np.ndarray:
    raw = tmp / "turn.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(raw), text],
                   check=True, capture_output=True, timeout=60)
    out = tmp / "turn16.wav"
    subprocess.run(["sox", "-D", str(raw), "-c", "1", "-b", "16", str(out), "rate", "16000"], check=True,
                   capture_output=True, timeout=60)
    samples, _ = sf.read(out, dtype="float32")
    return samples


def voices_for(call: Call) -> dict[str, tuple[str, int, int]]:
    """Caller and receiver: (espeak voice, wpm, pitch), two different voices."""
    rng = _rng(call.id)
    picks = rng.choice(len(ACCENTS) * len(VARIANTS), size=2, replace=False)
    out = {}
    for side, pick in zip(("C", "R"), picks):
        accent, variant = ACCENTS[int(pick) // len(VARIANTS)], VARIANTS[int(pick) % len(VARIANTS)]
        out[side] = (f"{accent}+{variant}", int(rng.choice(SPEEDS)), int(rng.integers(30, 75)))
    return out


def synthesize_call(call: Call, index: int) -> tuple[bytes, dict[str, object]]:
    """The call as a 16 kHz mono WAV, and how it was made."""
    rng = _rng(call.id + ":line")
    voices = voices_for(call)
    with tempfile.TemporaryDirectory(prefix="voice-eval-") as tmp:
        pieces = []
        for speaker, text in call.turns:
            voice, speed, pitch = voices[speaker]
            turn = _speak(text, voice, speed, pitch, Path(tmp)) * 10 ** (rng.uniform(-6, 6) / 20)
            pieces += [turn, np.zeros(int(16000 * rng.uniform(0.2, 0.7)), dtype=np.float32)]
        audio = np.concatenate([np.zeros(4000, dtype=np.float32), *pieces]).astype(np.float32)
        phone = index % PHONE_EVERY == 0
        audio = _phone_line(audio, rng, Path(tmp)) if phone else _room(audio, rng)
    peak = float(np.max(np.abs(audio))) or 1.0
    audio = audio / peak * 10 ** (rng.uniform(-12, -2) / 20)
    buf = io.BytesIO()
    sf.write(buf, audio, 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue(), {"voices": {k: v[0] for k, v in voices.items()},
                            "speeds": {k: v[1] for k, v in voices.items()}, "phone_line": phone}


def _colored(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    spectrum = np.fft.rfft(rng.normal(size=n))
    freqs = np.maximum(np.fft.rfftfreq(n), 1.0 / n)
    noise = np.fft.irfft(spectrum / freqs ** (exponent / 2), n)
    return (noise / (np.std(noise) + 1e-12)).astype(np.float32)


def _room(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    level = np.sqrt(np.mean(audio**2)) * 10 ** (-rng.uniform(22, 35) / 20)
    return audio + _colored(rng, audio.size, 1.0) * level  # pink noise


def _phone_line(audio: np.ndarray, rng: np.random.Generator, tmp: Path) -> np.ndarray:
    level = np.sqrt(np.mean(audio**2)) * 10 ** (-rng.uniform(18, 28) / 20)
    noisy = audio + _colored(rng, audio.size, 2.0) * level  # brown noise
    src, dst = tmp / "line-in.wav", tmp / "line-out.wav"
    sf.write(src, np.clip(noisy / (np.max(np.abs(noisy)) + 1e-9) * 0.8, -1, 1), 16000, subtype="FLOAT")
    subprocess.run(["sox", "-D", str(src), "-r", "8000", "-e", "u-law", "-b", "8", str(tmp / "line.wav"),
                    "sinc", "250-3600", "compand", "0.02,0.2", "-60,-40,-30,-15,0,-8", "-4"],
                   check=True, capture_output=True, timeout=60)
    subprocess.run(["sox", "-D", str(tmp / "line.wav"), "-e", "floating-point", "-b", "32", str(dst), "rate", "16000"],
                   check=True, capture_output=True, timeout=60)
    samples, _ = sf.read(dst, dtype="float32")
    return samples
