"""The sentence encoder of the voice scam model: all-MiniLM-L6-v2 in ONNX (int8), run by
onnxruntime with its tokenizer from ``tokenizers``. No torch, nothing downloaded.

A transcript is cut into windows of whole sentences (at most ``WINDOW_WORDS`` words,
each at most ``MAX_TOKENS`` word pieces); every window is embedded (mean of the token
vectors, L2-normalised: the sentence-transformers recipe, inside the ONNX graph), and
the windows are pooled two ways: their mean (normalised again) says what the call is
about as a whole, their element-wise maximum keeps a scam request that fills one window
of a long, otherwise harmless call. The model reads both: ``2 × EMBED_DIM`` numbers.

The files (``encoder.onnx``, ``tokenizer.json``) are built by
scripts/export_voice_encoder.py and shipped in models/voice/encoder/.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

EMBED_DIM = 384
WINDOW_WORDS = 48
MAX_TOKENS = 128
EMBEDDING_NAMES: list[str] = [f"emb_mean_{i}" for i in range(EMBED_DIM)] + [f"emb_max_{i}" for i in range(EMBED_DIM)]

_SENTENCE_END = re.compile(r"(?<=[.?!])\s+")


class EncoderError(Exception):
    """The encoder files are missing or unusable."""


def windows(text: str, max_words: int = WINDOW_WORDS) -> list[str]:
    """Consecutive whole sentences joined up to ``max_words`` words (a longer sentence,
    or a transcript without punctuation, is cut every ``max_words`` words)."""
    pieces: list[list[str]] = []
    for sentence in _SENTENCE_END.split(text.strip()):
        words = sentence.split()
        for start in range(0, len(words), max_words):
            pieces.append(words[start:start + max_words])
    out: list[list[str]] = []
    for words in pieces:
        if out and len(out[-1]) + len(words) <= max_words:
            out[-1].extend(words)
        elif words:
            out.append(list(words))
    return [" ".join(w) for w in out]


@dataclass
class TextEncoder:
    """The ONNX sentence encoder and its tokenizer, loaded once per process."""

    session: Any
    tokenizer: Any
    sha256: str
    path: str

    def embed_windows(self, texts: list[str]) -> np.ndarray:
        """``[len(texts), EMBED_DIM]`` normalised embeddings, one onnxruntime call."""
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.asarray([e.ids for e in encodings], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in encodings], dtype=np.int64)
        return np.asarray(self.session.run(None, {"input_ids": ids, "attention_mask": mask})[0], dtype=np.float32)

    def embed(self, transcript: str | None) -> np.ndarray:
        """Mean and max over the windows of a transcript (zeros when there is none)."""
        parts = windows(transcript) if transcript and transcript.strip() else []
        if not parts:
            return np.zeros(2 * EMBED_DIM, dtype=np.float32)
        vectors = self.embed_windows(parts)
        mean = vectors.mean(axis=0)
        mean /= max(float(np.linalg.norm(mean)), 1e-9)
        return np.concatenate([mean, vectors.max(axis=0)]).astype(np.float32)


def default_encoder_dir() -> Path:
    return Path(__file__).resolve().parents[3] / "models" / "voice" / "encoder"


def load_encoder(directory: str | Path | None = None, threads: int = 1) -> TextEncoder:
    """Open ``encoder.onnx`` and ``tokenizer.json`` from ``directory`` (default: the shipped one)."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    base = Path(directory) if directory else default_encoder_dir()
    model_file, tokenizer_file = base / "encoder.onnx", base / "tokenizer.json"
    for needed in (model_file, tokenizer_file):
        if not needed.is_file():
            raise EncoderError(f"sentence encoder file not found: {needed}")
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    tokenizer.enable_truncation(MAX_TOKENS)
    tokenizer.enable_padding()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    data = model_file.read_bytes()
    try:
        session = ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for bad files
        raise EncoderError(f"sentence encoder {model_file} cannot be loaded: {exc}") from None
    return TextEncoder(session=session, tokenizer=tokenizer, sha256=hashlib.sha256(data).hexdigest(), path=str(base))
