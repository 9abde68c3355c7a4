"""The text encoder: runtime (onnxruntime + tokenizers + numpy) and export-time tools."""
