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
    """Dynamic int8 (per-channel int8 weights, uint8 activations quantized at run time) on
    every weight MatMul except the ``keep_fp32`` groups. Returns the excluded node names."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    excluded = nodes_in_groups(onnx.load(str(source)), keep_fp32)
    quantize_dynamic(
        str(source), str(target), per_channel=True, weight_type=QuantType.QInt8,
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
        scale = np.abs(weight).max(axis=1 - axis) / 127.0
        scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
        shaped = scale[None, :] if axis == 1 else scale[:, None]
        quantized = np.clip(np.round(weight / shaped), -127, 127).astype(np.int8)
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
