"""A trained behaviour model as a torch-free artefact the worker serves with onnxruntime.

The artefact is a folder:

- ``user.onnx``: token arrays ``items``, ``kinds``, ``gaps`` (int64, batch x length,
  left-padded) to the user vector (float32, batch x dim): the last position's hidden state;
- ``items.npy``: the learnt item table (float32, (items + 1) x dim, row 0 padding): the
  id embedding plus the projected text vector of every item of the vocabulary;
- ``text_projection.npy`` (when the model reads text): the learnt projection (text_dim x
  dim) that gives an item the model has never seen an embedding from its text vector;
- ``manifest.json``: the vocabulary (item ids in index order), the model's configuration,
  its training result, the parity measured against torch and a content hash of the files
  above (the version the worker reports).

An item's score for a user is the dot product of the user vector with the item's row, as
in training (tied embeddings).
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from app.core.sequence import Tokens
from app.train.model import BehaviourModel

PARITY_TOLERANCE = 1e-3   # the largest |onnxruntime - torch| accepted on a user vector
OPSET = 18


class _UserVectors(nn.Module):
    """The graph the worker runs: user vectors, the last block computing the last position
    only (``every_position``: the graph before that, every position then the last, kept
    as the baseline of `streamrec bench behaviour`)."""

    def __init__(self, model: BehaviourModel, every_position: bool = False) -> None:
        super().__init__()
        self.model = model
        self.every_position = every_position

    def forward(self, items: Tensor, kinds: Tensor, gaps: Tensor) -> Tensor:
        if self.every_position:
            every: Tensor = self.model(items, kinds, gaps)[:, -1]
            return every
        vectors: Tensor = self.model.user_vectors(items, kinds, gaps)
        return vectors


def content_hash(folder: Path, names: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for name in sorted(names):
        digest.update(name.encode())
        digest.update((folder / name).read_bytes())
    return digest.hexdigest()[:16]


def export(model: BehaviourModel, item_ids: Sequence[str], sample: Tokens, folder: Path,
           result: dict[str, Any] | None = None, every_position: bool = False
           ) -> dict[str, Any]:
    """Write the artefact for ``model`` (vocabulary ``item_ids``) to ``folder``, check the
    ONNX graph against torch on ``sample`` (real histories) and return the manifest.
    ``every_position``: the slower graph of before (a benchmark's baseline)."""
    import onnxruntime as ort

    model.eval()
    folder.mkdir(parents=True, exist_ok=True)
    length = model.config.length
    dummy = tuple(torch.zeros((2, length), dtype=torch.int64) for _ in range(3))
    dummy[0][:, -3:] = 1
    dummy[1][:, -3:] = 1
    dummy[2][:, -3:] = 2
    onnx_path = folder / "user.onnx"
    started = time.perf_counter()
    with torch.no_grad(), warnings.catch_warnings():
        # one batch dimension shared by the three inputs: the exporter says it names it once
        warnings.filterwarnings("ignore", ".*The axis name", UserWarning)
        batch = torch.export.Dim("batch", min=1, max=65_536)
        program = torch.onnx.export(
            _UserVectors(model, every_position).eval(), dummy,
            input_names=["items", "kinds", "gaps"], output_names=["user"],
            opset_version=OPSET, dynamo=True, verbose=False,
            dynamic_shapes=({0: batch}, {0: batch}, {0: batch}))
        if program is None:
            raise RuntimeError("torch.onnx.export returned no program")
        program.save(str(onnx_path))
    export_seconds = time.perf_counter() - started
    model.eval()   # the exporter puts modules back in the mode it found them in
    with torch.no_grad():
        table = model.item_table().numpy().astype(np.float32)
        np.save(folder / "items.npy", table)
        names = ["user.onnx", "items.npy"]
        if model.text_projection is not None:
            np.save(folder / "text_projection.npy",
                    model.text_projection.weight.T.numpy().astype(np.float32))
            names.append("text_projection.npy")
        expected = model.user_vectors(torch.from_numpy(sample.items),
                                      torch.from_numpy(sample.kinds),
                                      torch.from_numpy(sample.gaps)).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(["user"], {"items": sample.items, "kinds": sample.kinds,
                                 "gaps": sample.gaps})[0]
    parity = float(np.abs(got - expected).max()) if len(expected) else 0.0
    if not parity <= PARITY_TOLERANCE:
        raise RuntimeError(f"the ONNX graph differs from torch by {parity:.2e} "
                           f"(> {PARITY_TOLERANCE:.0e}); not exported")
    manifest: dict[str, Any] = {
        "kind": "behaviour-model",
        "version": content_hash(folder, names),
        "config": model.config.as_dict(),
        "items": list(item_ids),
        "files": names,
        "parity_max_abs": parity,
        "parity_users": len(expected),
        "export_seconds": round(export_seconds, 2),
        "opset": OPSET,
        "result": result or {},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest
