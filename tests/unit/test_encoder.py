"""The runtime encoder on the shipped int8 artifact: no torch, no network."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from app.encoder import drift_set
from app.encoder.artifact import verify
from app.encoder.drift import Followed, Reference, Thresholds, row_cosines, top_k
from app.encoder.export import REFERENCE, corpus_texts
from app.encoder.runtime import Encoder, cls_pool, l2_normalize, mean_pool

ARTIFACT = Path(__file__).parents[2] / "models" / "minilm-l6-int8"

# First values of single-text embeddings of the shipped artifact. A changed model, tokenizer,
# pooling or session setting fails here loudly. The integer weights use a 7-bit range, so
# CPUs with and without VNNI compute the same integers (app/encoder/quantize.py); the
# tolerance leaves room for fp32 kernels that differ by instruction set (a full-range
# artifact differed by up to 0.008 between such CPUs: far outside it).
GOLDEN = {
    "Toy Story (1995) Animation Children's Comedy":
        [-0.075485, 0.02585, 0.039228, -0.04223, 0.017133, 0.000009, 0.072335, 0.018399],
    "sci fi movies like interstellar":
        [-0.099377, -0.102078, 0.01107, 0.033152, -0.00041, -0.076964, -0.029517, -0.016063],
    "无线降噪耳机":
        [0.003009, 0.047277, 0.068916, 0.001628, -0.026073, 0.010663, 0.112886, -0.051871],
}
GOLDEN_TOLERANCE = 5e-4


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder(ARTIFACT)


def test_mean_pool_ignores_padding() -> None:
    hidden = np.array([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]], dtype=np.float32)
    mask = np.array([[1, 1, 0]], dtype=np.int64)
    assert np.allclose(mean_pool(hidden, mask), [[2.0, 3.0]])
    assert np.allclose(cls_pool(hidden, mask), [[1.0, 2.0]])


def test_l2_normalize() -> None:
    out = l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32))
    assert np.allclose(out, [[0.6, 0.8], [0.0, 0.0]])


def test_shipped_artifact_matches_its_manifest() -> None:
    assert verify(ARTIFACT) == []


@pytest.mark.parametrize("text", list(GOLDEN))
def test_golden_vectors(encoder: Encoder, text: str) -> None:
    vector = encoder.encode([text])[0]
    assert vector.shape == (384,)
    assert np.allclose(vector[:8], GOLDEN[text], atol=GOLDEN_TOLERANCE)


def test_drift_against_the_fp32_reference_meets_the_thresholds(encoder: Encoder) -> None:
    """The export's gate, re-checked from the fp32 answers it stored (no torch here)."""
    reference = Reference.load(ARTIFACT / REFERENCE)
    drift = reference.drift(encoder, drift_set.ALL, corpus_texts())
    assert drift.failures(Thresholds()) == []
    assert drift.sentences == len(drift_set.ALL)
    assert drift.corpus_items == 3883


def test_a_followed_encoder_tells_its_batches_and_gives_the_same_vectors(
        encoder: Encoder) -> None:
    """What export-model's drift bars show: progress per batch, the vectors untouched."""
    texts = corpus_texts()[:300]
    told: list[tuple[str, int, int]] = []
    followed = Followed(encoder, "drift", lambda *step: told.append(step))
    assert np.array_equal(followed.encode(texts), encoder.encode(texts))
    assert told[-1] == ("drift", 300, 300)
    assert [done for _, done, _ in told] == sorted({done for _, done, _ in told})
    assert len(told) == -(-300 // encoder.batch_size)


def test_vectors_are_unit_length_and_batching_barely_matters(encoder: Encoder) -> None:
    texts = drift_set.TITLES + drift_set.QUERIES
    together = encoder.encode(texts)
    alone = np.stack([encoder.encode([t])[0] for t in texts])
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    # int8 activations are quantized per batch: neighbours in a batch move a vector a little
    assert row_cosines(together, alone).min() > 0.995


def test_a_relevant_item_is_nearest_to_its_query(encoder: Encoder) -> None:
    items = ["Wireless noise-cancelling over-ear headphones", "Organic green tea, 100 bags",
             "Kids' waterproof hiking boots", "Espresso machine with milk frother"]
    vectors = encoder.encode(items)
    for query, expected in [("headphones for the train", 0), ("coffee maker", 3),
                            ("boots for children", 2)]:
        scores = vectors @ encoder.encode_query(query)
        assert int(np.argmax(scores)) == expected, query


def test_long_text_is_truncated_to_the_bounded_length(encoder: Encoder) -> None:
    ids, mask = encoder.tokenize(["word " * 5000])
    assert mask.sum() == 256
    assert ids.shape[1] == encoder.max_length == 256
    assert encoder.encode(["word " * 5000]).shape == (1, 384)


def test_query_cache_is_lru_and_bounded() -> None:
    small = Encoder(ARTIFACT, cache_size=2)
    first = small.encode_query("a")
    assert small.encode_query("a") is first
    small.encode_query("b")
    small.encode_query("c")  # evicts "a"
    assert small.encode_query("a") is not first
    assert len(small._cache) == 2


def test_only_declared_inputs_are_fed(encoder: Encoder) -> None:
    assert {i.name for i in encoder.session.get_inputs()} == {
        "input_ids", "attention_mask", "token_type_ids"}
    ids, mask = encoder.tokenize(["x"])
    assert encoder.run(ids, mask).shape == (1, 384)


def test_empty_input(encoder: Encoder) -> None:
    assert encoder.encode([]).shape == (0, 384)


def test_runtime_imports_neither_torch_nor_transformers() -> None:
    code = ("import sys; from app.encoder.runtime import Encoder; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules; "
            "assert 'optimum' not in sys.modules and 'onnx' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_top_k_excludes_the_query() -> None:
    vectors = l2_normalize(np.eye(4, dtype=np.float32) + 0.1)
    assert 0 not in top_k(vectors, np.array([0]), 3)[0]


def test_reduced_range_weights_cannot_saturate_a_pair_sum() -> None:
    """7-bit weights (onnxruntime's reduce_range): uint8 activations times them summed in
    pairs (``vpmaddubsw`` on AVX2 without VNNI) stay inside int16, and each weight is within
    half a step of its fp32 value."""
    from app.encoder.quantize import symmetric_reduced

    rng = np.random.default_rng(0)
    weight = rng.normal(0, 0.05, (384, 64)).astype(np.float32)
    weight[:, 0] = 0.0                                   # an all-zero column keeps scale 1
    q, scale = symmetric_reduced(weight)
    assert q.dtype == np.int8
    assert int(np.abs(q).max()) == 64
    assert scale[0] == 1.0
    assert (np.abs(q * scale - weight).max(axis=0) <= scale / 2 + 1e-7).all()
    assert 255 * int(np.abs(q).max()) * 2 <= np.iinfo(np.int16).max
