"""OCR benchmark (python -m bench.ocr)."""
