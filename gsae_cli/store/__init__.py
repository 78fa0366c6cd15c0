"""The activation store: a zarr v3 group of `activations` [n_tokens, d_model] and `tokens` [n_tokens],
chunked along rows and sharded into files, with a crc32c per chunk.

- `layout`: the on-disk layout and the cheap checks that read only JSON;
- `writer`: `StoreWriter`, resumable after a kill at any instant, one writer or one per rank;
- `reader`: `open_store` and `ActivationStore`, which refuse damaged chunks;
- `batches`: `ShuffledBatches`, the seeded, resumable training order.

The format, the resume contract and the several-writer protocol: docs/architecture.md, "The
activation store".
"""

from gsae_cli.store.batches import ShuffledBatches
from gsae_cli.store.layout import (
    DamagedStoreError,
    StoreLayout,
    default_shard_chunks,
    is_complete,
    rows_written,
    store_info,
)
from gsae_cli.store.reader import ActivationStore, open_store
from gsae_cli.store.writer import StoreWriter

__all__ = [
    "ActivationStore",
    "DamagedStoreError",
    "ShuffledBatches",
    "StoreLayout",
    "StoreWriter",
    "default_shard_chunks",
    "is_complete",
    "open_store",
    "rows_written",
    "store_info",
]
