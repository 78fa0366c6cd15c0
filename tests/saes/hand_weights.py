"""The hand-set weights of the SAE unit tests (d_model = 2, d_sae = 3), shared by test_saes.py
and test_sparse_activations.py; their docstrings give the values worked out by hand from these:
    W_enc / W_gate = [[1, 0, 1], [0, 1, -1]]     (columns = features)
    W_dec rows     = [1, 0], [0, 1], [0.6, 0.8]  (unit norm)
    b_dec          = [0.5, 0]
    x              = [1.5, 2.0]   ->  x - b_dec = [1, 2],  (x - b_dec) W = [1, 2, -1]
"""

from __future__ import annotations

import torch

W = [[1.0, 0.0, 1.0], [0.0, 1.0, -1.0]]
W_DEC = [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]
B_DEC = [0.5, 0.0]
X1 = [[1.5, 2.0]]


def t(v) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float32)


def set_params(module: torch.nn.Module, **values) -> None:
    with torch.no_grad():
        for name, v in values.items():
            getattr(module, name).copy_(t(v))
