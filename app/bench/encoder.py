"""`streamrec bench encoder`: PyTorch fp32 (when installed) vs ONNX fp32 vs ONNX int8, in one
run on one machine. Each variant is measured in its own subprocess (clean memory figures, no
shared thread pools), and the rounds alternate between variants so that a noisy neighbour
hits all of them alike; the median round is reported.

Per variant: sentences/s end to end (tokenize + infer + pool) for titles and ~128-token
descriptions at batch 1, 8, 32 and 128; p50/p99 latency of one short query; tokenizer-only
throughput; model file size; resident memory after loading and after the run.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from app.encoder import drift_set
from app.plots import pyplot

BATCHES = (1, 8, 32, 128)
SHORT_QUERY = "sci fi movies like interstellar"


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def bench_texts() -> dict[str, list[str]]:
    """Titles ("Title (Year) Genres" from MovieLens-1M, about 10-20 tokens) and descriptions
    (three of the drift set's product and film descriptions joined: about 128 tokens)."""
    from app.encoder.export import corpus_texts

    titles = corpus_texts()[:512]
    pool = drift_set.DESCRIPTIONS
    descriptions = [" ".join(pool[(i + j) % len(pool)] for j in range(3)) for i in range(256)]
    return {"titles": titles, "descriptions": descriptions}


def _throughput(encode: Callable[[list[str]], Any], texts: list[str], batch: int,
                seconds: float) -> float:
    encode(texts[:batch])  # warm-up
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        for start in range(0, len(texts) - batch + 1, batch):
            encode(texts[start:start + batch])
            done += batch
            if time.perf_counter() - started >= seconds:
                break
    return done / (time.perf_counter() - started)


def _latency(encode: Callable[[list[str]], Any], count: int = 300) -> dict[str, float]:
    for _ in range(20):
        encode([SHORT_QUERY])
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        encode([SHORT_QUERY])
        samples.append((time.perf_counter() - started) * 1000)
    return {"p50_ms": float(np.percentile(samples, 50)),
            "p99_ms": float(np.percentile(samples, 99))}


def _load(variant: str, path: Path, threads: int) -> tuple[Callable[[list[str]], Any],
                                                            Callable[[list[str]], Any], int]:
    """(encode, tokenize, model bytes) for one variant."""
    if variant == "torch-fp32":
        import torch
        from transformers import AutoModel, AutoTokenizer

        torch.set_num_threads(threads)
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = AutoModel.from_pretrained(str(path)).eval()

        def tokenize_t(texts: list[str]) -> Any:
            return tokenizer(texts, padding=True, truncation=True, max_length=256,
                             return_tensors="pt")

        def encode_t(texts: list[str]) -> Any:
            with torch.inference_mode():
                batch = tokenize_t(texts)
                hidden = model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).float()
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                return torch.nn.functional.normalize(pooled, dim=1).numpy()

        size = sum(p.stat().st_size for p in path.glob("*.safetensors"))
        return encode_t, tokenize_t, size
    from app.encoder.runtime import Encoder

    encoder = Encoder(path, threads=threads, batch_size=128, cache_size=0, spinning=True)
    return (lambda texts: encoder.encode(texts), encoder.tokenize,
            (path / "model.onnx").stat().st_size)


def measure_variant(variant: str, path: Path, threads: int, seconds: float) -> dict[str, Any]:
    """Everything about one variant, in this process."""
    texts = bench_texts()
    before = rss_bytes()
    encode, tokenize, size = _load(variant, path, threads)
    loaded = rss_bytes()
    result: dict[str, Any] = {"variant": variant, "model_bytes": size,
                              "rss_loaded_bytes": loaded - before}
    for kind, items in texts.items():
        result[kind] = {str(b): _throughput(encode, items, b, seconds) for b in BATCHES}
        result[f"tokenizer_{kind}_per_s"] = _throughput(tokenize, items, 32, seconds / 2)
    result["latency_batch1"] = _latency(encode)
    result["rss_after_bytes"] = rss_bytes() - before
    return result


def run(variants: Sequence[tuple[str, Path]], threads: int, seconds: float, rounds: int,
        say: Callable[[str], None]) -> dict[str, Any]:
    """Measure every variant ``rounds`` times, alternating, each in a subprocess."""
    per_variant: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in variants}
    total = rounds * len(variants)
    step = 0
    for round_ in range(rounds):
        for name, path in variants:
            step += 1
            say(f"[{step}/{total}] round {round_ + 1}: {name}")
            out = subprocess.run(
                [sys.executable, "-m", "app.bench.encoder", name, str(path), str(threads),
                 str(seconds)],
                check=True, capture_output=True, text=True,
            )
            per_variant[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {
        "threads": threads,
        "rounds": rounds,
        "seconds_per_cell": seconds,
        "variants": {name: _median(results) for name, results in per_variant.items()},
    }


def _median(results: list[dict[str, Any]]) -> dict[str, Any]:
    first = results[0]
    merged: dict[str, Any] = {}
    for key, value in first.items():
        if isinstance(value, dict):
            merged[key] = _median([r[key] for r in results])
        elif isinstance(value, int | float):
            merged[key] = statistics.median(r[key] for r in results)
        else:
            merged[key] = value
    return merged


def markdown(report: dict[str, Any], baseline: str = "onnx-fp32") -> str:
    """The tables for BENCHMARKS.md."""
    variants = report["variants"]
    base = variants.get(baseline)
    lines = [
        f"{report['threads']} threads, median of {report['rounds']} alternating rounds, "
        f"{report['seconds_per_cell']} s per cell. Sentences/s end to end "
        "(tokenize + infer + pool + normalise).",
        "",
        "| variant | kind | batch 1 | batch 8 | batch 32 | batch 128 | x ONNX fp32 @32 |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, result in variants.items():
        for kind in ("titles", "descriptions"):
            cells = [f"{result[kind][str(b)]:,.0f}" for b in BATCHES]
            ratio = result[kind]["32"] / base[kind]["32"] if base else float("nan")
            lines.append(f"| {name} | {kind} | " + " | ".join(cells) + f" | {ratio:.2f} |")
    lines += [
        "",
        "| variant | query p50 | query p99 | tokenizer titles/s | tokenizer descriptions/s "
        "| model file | RSS after load | RSS after run |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, result in variants.items():
        lines.append(
            f"| {name} | {result['latency_batch1']['p50_ms']:.2f} ms "
            f"| {result['latency_batch1']['p99_ms']:.2f} ms "
            f"| {result['tokenizer_titles_per_s']:,.0f} "
            f"| {result['tokenizer_descriptions_per_s']:,.0f} "
            f"| {result['model_bytes'] / 2**20:.1f} MiB "
            f"| {result['rss_loaded_bytes'] / 2**20:.0f} MiB "
            f"| {result['rss_after_bytes'] / 2**20:.0f} MiB |"
        )
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], target: Path) -> bool:
    """Bar chart of titles/s and descriptions/s at each batch size; False without matplotlib."""
    plt = pyplot()
    if plt is None:
        return False
    variants = report["variants"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(len(variants), 1)
    for ax, kind in zip(axes, ("titles", "descriptions"), strict=True):
        for i, (name, result) in enumerate(variants.items()):
            xs = np.arange(len(BATCHES)) + i * width
            ax.bar(xs, [result[kind][str(b)] for b in BATCHES], width, label=name)
        ax.set_xticks(np.arange(len(BATCHES)) + width * (len(variants) - 1) / 2)
        ax.set_xticklabels([f"batch {b}" for b in BATCHES])
        ax.set_ylabel("sentences / s")
        ax.set_title(f"{kind} ({report['threads']} threads)")
        ax.legend()
    fig.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return True


if __name__ == "__main__":
    name, folder, thread_count, cell_seconds = sys.argv[1:5]
    print(json.dumps(measure_variant(name, Path(folder), int(thread_count), float(cell_seconds))))
