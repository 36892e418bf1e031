"""Shared pieces of the voice model's training and evaluation scripts: the corpus, clip
synthesis and a cache of speech-recognition output (recognition is the slow step)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app.dev.voice_clips import ClipStyle, synthesize_wav  # noqa: E402
from app.services.voice.features import AudioLimits, decode_audio  # noqa: E402
from app.services.voice.model import load_asr  # noqa: E402

CORPUS = ROOT / "data" / "voice" / "transcripts.jsonl"
CACHE_DIR = ROOT / "var" / "voice-model"
LIMITS = AudioLimits()


def load_corpus(split: str | None = None) -> list[dict[str, Any]]:
    """The labelled transcripts, optionally one split (``train`` / ``test``)."""
    rows = [json.loads(line) for line in CORPUS.read_text().splitlines() if line.strip()]
    return [r for r in rows if split is None or r["split"] == split]


class AsrCache:
    """Speech recognition output keyed by the clip's sha256, kept under var/."""

    def __init__(self, name: str) -> None:
        self.path = CACHE_DIR / f"asr-{name}.json"
        self.data: dict[str, str] = {}
        # Also what a parallel fill (``prefill_asr``) left in asr-<name>.<part>.json.
        for part in sorted(CACHE_DIR.glob(f"asr-{name}.*.json")) + [self.path]:
            if part.exists():
                self.data.update(json.loads(part.read_text()))
        self._asr = None

    def transcribe(self, wav: bytes) -> str:
        key = hashlib.sha256(wav).hexdigest()
        if key not in self.data:
            if self._asr is None:
                self._asr = load_asr()
            self.data[key], _ = self._asr.transcribe(decode_audio(wav, LIMITS))
        return self.data[key]

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data))


def clip(text: str, style: ClipStyle) -> bytes:
    """The synthesized WAV of a transcript."""
    return synthesize_wav(text, style)


def prefill_asr(name: str, texts_styles: list[tuple[str, ClipStyle]], part: str) -> None:
    """Recognise clips into asr-<name>.<part>.json (a second process filling a cache in parallel)."""
    cache = AsrCache(name)
    cache.path = CACHE_DIR / f"asr-{name}.{part}.json"
    for n, (text, style) in enumerate(texts_styles):
        cache.transcribe(clip(text, style))
        if n % 20 == 19:
            cache.save()
    cache.save()
