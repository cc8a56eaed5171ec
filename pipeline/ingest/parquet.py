"""Parquet rows as records (one record batch at a time), with the limits every reader applies.

A row nests like its JSON form (a struct or map is an object, a list an array; the row itself is one
level); its size is the bytes of its data (strings by length, lists summed, fixed widths). A string
cell is text, never parsed, so brackets inside it are not nesting.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.ingest.raw import (
    LIMITS,
    RAW_KEEP_BYTES,
    Limits,
    RawItem,
    SourceError,
    to_json_text,
    too_deep,
    too_large,
)


def iter_parquet(path: Path, *, batch_rows: int = 8192, limits: Limits = LIMITS) -> Iterator[RawItem]:
    """Rows of a parquet file as dicts, one record batch at a time, with the record limits."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a file that is not parquet
        raise SourceError(f"{path}: not a readable parquet file ({e})") from None
    depth = 1 + max((_type_depth(f.type) for f in pf.schema_arrow), default=0)  # a row is an object
    index = 0
    for batch in pf.iter_batches(batch_size=batch_rows):
        if depth > limits.max_depth:
            for _ in range(batch.num_rows):
                yield RawItem(str(index), raw=f"(a parquet row whose columns nest {depth} levels deep)",
                              error=too_deep(depth, limits))
                index += 1
            continue
        sizes = _row_bytes(batch) if batch.nbytes > limits.max_record_bytes else None
        for i, row in enumerate(batch.to_pylist()):
            if sizes is not None and sizes[i] > limits.max_record_bytes:
                yield RawItem(str(index), raw=_preview(row), error=too_large(int(sizes[i]), limits, "row"))
            else:
                yield RawItem(str(index), row)
            index += 1


def _type_depth(t: Any) -> int:
    """Levels an arrow type adds, counted like JSON: a struct or a map is an object, a list an array."""
    import pyarrow as pa

    if pa.types.is_struct(t):
        return 1 + max((_type_depth(t.field(i).type) for i in range(t.num_fields)), default=0)
    if pa.types.is_map(t):
        return 1 + _type_depth(t.item_type)
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return 1 + _type_depth(t.value_type)
    if pa.types.is_dictionary(t):
        return _type_depth(t.value_type)
    return 0


def _row_bytes(batch: Any) -> np.ndarray:
    """Bytes of data in each row of a record batch (strings by length, lists summed, fixed widths)."""
    total = np.zeros(batch.num_rows, dtype=np.int64)
    for col in batch.columns:
        total += _array_bytes(col)
    return total


def _array_bytes(arr: Any) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    t, n = arr.type, len(arr)
    if pa.types.is_dictionary(t):
        arr = arr.dictionary_decode()
        t = arr.type
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return pc.binary_length(arr).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_map(t):
        inner = np.concatenate(([0], np.cumsum(_array_bytes(arr.values))))
        offsets = arr.offsets.to_numpy()
        return inner[offsets[1:]] - inner[offsets[:-1]]
    if pa.types.is_struct(t):
        out = np.zeros(n, dtype=np.int64)
        for field in arr.flatten():
            out += _array_bytes(field)
        return out
    try:
        return np.full(n, max(t.bit_width // 8, 1), dtype=np.int64)
    except ValueError:  # not a fixed-width type: spread its bytes evenly
        return np.full(n, arr.nbytes // max(n, 1), dtype=np.int64)


def _preview(value: Any, chars: int = 4096) -> str:
    """A row as JSON with long strings cut, for the quarantine of a row over the size limit."""
    def cut(v: Any) -> Any:
        if isinstance(v, str) and len(v) > chars:
            return v[:chars] + f"… [{len(v):,} characters]"
        if isinstance(v, dict):
            return {k: cut(x) for k, x in v.items()}
        if isinstance(v, list):
            return [cut(x) for x in v]
        return v
    return to_json_text(cut(value))[:RAW_KEEP_BYTES]
