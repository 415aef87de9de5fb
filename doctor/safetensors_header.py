"""Read a .safetensors header without the safetensors library: 8-byte little-endian length, then JSON.

Enough to tell a complete file from a truncated one (the last tensor's end offset must fit in the file)
and to count parameters for the memory planner, without reading the weights.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from typing import Any

MAX_HEADER = 100 * 1024 * 1024  # the format's own limit
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}


class HeaderError(ValueError):
    pass


@dataclass
class Header:
    tensors: dict[str, dict[str, Any]]
    metadata: dict[str, str]
    data_start: int
    data_end: int  # largest end offset of any tensor, relative to data_start
    file_size: int

    @property
    def complete(self) -> bool:
        return self.data_start + self.data_end <= self.file_size

    def tensor_bytes(self, name: str) -> int:
        t = self.tensors[name]
        return _numel(t) * DTYPE_BYTES.get(t.get("dtype", "BF16"), 2)

    @property
    def parameters(self) -> int:
        return sum(_numel(t) for t in self.tensors.values())


def _numel(t: dict[str, Any]) -> int:
    n = 1
    for d in t.get("shape", []):
        n *= int(d)
    return n


def read_header(path: str | os.PathLike[str]) -> Header:
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise HeaderError(f"{size} bytes: too short for a safetensors header")
        (n,) = struct.unpack("<Q", raw)
        if n > MAX_HEADER or n > size - 8:
            raise HeaderError(f"header length {n} does not fit a {size}-byte file (truncated or not safetensors)")
        blob = fh.read(n)
    try:
        data = json.loads(blob)
    except ValueError as exc:
        raise HeaderError(f"header is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise HeaderError("header is not a JSON object")
    meta = data.pop("__metadata__", {}) or {}
    end = 0
    for name, t in data.items():
        try:
            _start, stop = t["data_offsets"]
            end = max(end, int(stop))
        except (KeyError, TypeError, ValueError):
            raise HeaderError(f"tensor {name!r} has no valid data_offsets") from None
    return Header(tensors=data, metadata=meta, data_start=8 + n, data_end=end, file_size=size)
