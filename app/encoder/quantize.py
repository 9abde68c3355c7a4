"""int8 quantization of an exported BERT-style encoder. Export-time only (`export` extra).

Two measured facts shape it (BENCHMARKS.md, "Encoder"):

- Dynamic int8 on every MatMul (onnxruntime, per-channel weights) is ~2x the fp32 speed on
  this CPU but moves neighbours: overlap@10 0.86 on MovieLens-1M. Weight rounding alone is
  nearly free (0.97): the loss comes from quantizing activations with one scale per tensor,
  worst in the feed-forward blocks (after GELU). So some MatMuls stay on fp32 activations;
  which ones is chosen by a greedy search on the drift measure (``DEFAULT_KEEP_FP32``).
- A MatMul kept on fp32 activations can still store its weight as int8: the weight is
  written as int8 with a per-column scale plus a DequantizeLinear, folded back to fp32 once
  when the session loads. The same holds for the word-embedding table (per-row scales). The
  file is ~4x smaller, the speed and drift are those of fp32 weights rounded to int8.
- Integer weights use a 7-bit range (``reduce_range``: -64..64 in int8). On x86 CPUs
  without VNNI (AVX2 only, e.g. an AMD EPYC before Zen 4) onnxruntime multiplies uint8
  activations by int8 weights with ``vpmaddubsw``, whose int16 pair sums saturate at full
  8-bit range: the same artifact then answered differently there (overlap@10 0.896 against
  0.904 on a VNNI CPU, golden vectors off by up to 0.008). With 7-bit weights no pair sum
  can saturate (255 * 64 * 2 < 32,767), so every CPU computes the same integers, at a cost
  in drift of 0.0006 mean cosine (measured: 0.9965 / 0.9915 / 0.902, gate met).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

# Found by greedy search (see BENCHMARKS.md): the feed-forward MatMuls whose activations
# are left in fp32, named "L<layer>.<kind>", kind in qkv, attn_out, ffn_in, ffn_out.
DEFAULT_KEEP_FP32: tuple[str, ...] = (
    "L0.ffn_out", "L1.ffn_out", "L2.ffn_out", "L3.ffn_out", "L4.ffn_out", "L5.ffn_out",
    "L4.ffn_in", "L2.ffn_in",
)

# multilingual-e5-small (12 layers): with only the FFN outputs on fp32 activations the
# overlap@10 was 0.872, with the whole feed-forward block 0.934 (BENCHMARKS.md).
E5_KEEP_FP32: tuple[str, ...] = tuple(
    f"L{layer}.{kind}" for layer in range(12) for kind in ("ffn_in", "ffn_out")
)

_LAYER = re.compile(r"layer\.(\d+)/")


def matmul_group(node_name: str) -> str | None:
    """The group of a BERT MatMul node as exported by optimum, e.g. "L3.ffn_in"."""
    match = _LAYER.search(node_name)
    if match is None:
        return None
    if "/attention/self/" in node_name:
        kind = "qkv"
    elif "/attention/output/" in node_name:
        kind = "attn_out"
    elif "/intermediate/" in node_name:
        kind = "ffn_in"
    elif "/output/" in node_name:
        kind = "ffn_out"
    else:
        return None
    return f"L{match.group(1)}.{kind}"


def weight_matmuls(model: Any) -> list[Any]:
    inits = {i.name for i in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits]


def nodes_in_groups(model: Any, groups: Iterable[str]) -> list[str]:
    wanted = set(groups)
    return [n.name for n in weight_matmuls(model) if matmul_group(n.name) in wanted]


def quantize_dynamic_int8(source: Path, target: Path, keep_fp32: Iterable[str]) -> list[str]:
    """Dynamic int8 (per-channel int8 weights in a 7-bit range, uint8 activations quantized
    at run time) on every weight MatMul except the ``keep_fp32`` groups. Returns the
    excluded node names."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    excluded = nodes_in_groups(onnx.load(str(source)), keep_fp32)
    quantize_dynamic(
        str(source), str(target), per_channel=True, reduce_range=True,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul"], nodes_to_exclude=excluded,
        extra_options={"MatMulConstBOnly": True},
    )
    return excluded


def store_weights_int8(source: Path, target: Path) -> int:
    """Store the remaining fp32 MatMul weights (per output column) and the word embeddings
    (per row) as int8 + scale + DequantizeLinear. Returns how many tensors were converted."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(source))
    inits = {i.name: i for i in model.graph.initializer}
    axes: dict[str, int] = {}
    for node in model.graph.node:
        name = node.input[1] if node.op_type == "MatMul" and len(node.input) > 1 else ""
        if name in inits and inits[name].data_type == onnx.TensorProto.FLOAT \
                and len(inits[name].dims) == 2:
            axes[name] = 1
        if node.op_type == "Gather" and node.input[0] in inits \
                and "word_embeddings" in node.input[0]:
            axes[node.input[0]] = 0
    dequantize = []
    for name, axis in axes.items():
        weight = numpy_helper.to_array(inits[name]).astype(np.float32)
        quantized, scale = symmetric_int8(weight, axis, 127)
        model.graph.initializer.remove(inits[name])
        model.graph.initializer.extend([
            numpy_helper.from_array(quantized, f"{name}_int8"),
            numpy_helper.from_array(scale, f"{name}_scale"),
        ])
        dequantize.append(helper.make_node(
            "DequantizeLinear", [f"{name}_int8", f"{name}_scale"], [name], axis=axis,
            name=f"{name}_DequantizeLinear",
        ))
    nodes = dequantize + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(target))
    return len(axes)


def symmetric_int8(weight: np.ndarray, axis: int, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 of a 2-D weight with one scale per index along ``axis`` (1: per
    column, 0: per row): scale max|w| / ``limit`` (1 for an all-zero slice), values rounded
    half to even and clipped to -limit..limit."""
    scale = np.abs(weight).max(axis=1 - axis) / float(limit)
    scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
    shaped = scale[None, :] if axis == 1 else scale[:, None]
    return np.clip(np.round(weight / shaped), -limit, limit).astype(np.int8), scale


def symmetric_reduced(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column symmetric int8 in the 7-bit range, as onnxruntime's ``reduce_range``:
    scale max|w| / 64, clipped to -64..64."""
    return symmetric_int8(weight, 1, 64)


def reduce_weight_range(model: Any, fp32: dict[str, np.ndarray]) -> int:
    """Requantize the integer weights of a quantized model in place to the 7-bit range,
    from the fp32 weights they were made from (``fp32``: the checkpoint's tensors by name,
    [out, in] as in a PyTorch Linear). Each weight is first checked against its source:
    the stored int8 times its scale lies within half a step of the fp32 value. Returns how
    many weights were requantized."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    done = 0
    for node in model.graph.node:
        if node.op_type != "MatMulInteger" or node.input[1] not in inits:
            continue
        suffix = node.name.removesuffix("/MatMul_quant").strip("/").replace("/", ".")
        matches = [k for k in fp32 if k.endswith(suffix + ".weight")]
        if len(matches) != 1:
            raise KeyError(f"{node.name}: {len(matches)} fp32 weights match")
        weight = fp32[matches[0]].T.astype(np.float32)          # [in, out], as MatMul's B
        q_name = node.input[1]
        s_name = q_name.removesuffix("_quantized") + "_scale"
        stored = numpy_helper.to_array(inits[q_name]).astype(np.float32)
        scale = numpy_helper.to_array(inits[s_name]).astype(np.float32)
        if stored.shape != weight.shape or (np.abs(stored * scale - weight).max(axis=0)
                                            > 0.5 * scale + 1e-6).any():
            raise ValueError(f"{node.name}: the stored weight was not made from {matches[0]}")
        q7, s7 = symmetric_reduced(weight)
        inits[q_name].CopyFrom(numpy_helper.from_array(q7, q_name))
        inits[s_name].CopyFrom(numpy_helper.from_array(s7, s_name))
        done += 1
    return done


def load_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The float32 tensors of a .safetensors file (the format is a JSON header and raw
    little-endian data; no torch needed)."""
    import json
    import struct

    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    base = 8 + length
    out: dict[str, np.ndarray] = {}
    for name, meta in header.items():
        if name == "__metadata__" or meta["dtype"] != "F32":
            continue
        begin, end = meta["data_offsets"]
        out[name] = np.frombuffer(raw[base + begin:base + end], dtype="<f4").reshape(
            meta["shape"])
    return out
