"""Benchmark of the chunked-file merge: server-side UploadPartCopy against download + re-upload."""
