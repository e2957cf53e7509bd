#!/usr/bin/env python3
"""Writes the hand-built safetensors fixtures under Fixtures/safetensors/: one malformed file per
rejection rule of DESIGN.md section 4, and valid edge cases the reference reader accepts.
Bytes are built by hand (struct + json), not by the safetensors library, so they can lie."""
import json
import os
import struct

import numpy as np

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Fixtures", "safetensors")
bad = os.path.join(root, "malformed")
good = os.path.join(root, "valid")
os.makedirs(bad, exist_ok=True)
os.makedirs(good, exist_ok=True)


def raw(header_bytes: bytes, data: bytes = b"", length=None) -> bytes:
    n = len(header_bytes) if length is None else length
    return struct.pack("<Q", n) + header_bytes + data


def st(header, data: bytes = b"", pad: int = 0, lead: int = 0) -> bytes:
    text = (" " * lead + json.dumps(header, separators=(",", ":")) + " " * pad).encode()
    return raw(text, data)


def write(directory, name, content: bytes):
    with open(os.path.join(directory, name), "wb") as f:
        f.write(content)


f32 = np.arange(6, dtype="<f4").tobytes()  # 24 bytes, shape [2, 3]
ok = {"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}

# --- malformed: one file per rule, named after the rule ---
write(bad, "file_too_small.safetensors", b"\x05\x00\x00\x00")
write(bad, "header_too_large.safetensors", raw(b"{}", length=100_000_001))
write(bad, "header_past_end.safetensors", raw(b'{"a":1}', length=4096))
write(bad, "header_not_utf8.safetensors", raw(b'{"\xff\xfe":{}}    '))
write(bad, "header_not_json.safetensors", raw(b'{"a": {"dtype": "F32",'))
write(bad, "duplicate_key.safetensors",
      raw(b'{"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},"a":{"dtype":"F32","shape":[6],"data_offsets":[0,24]}}', f32))
write(bad, "unknown_dtype.safetensors", st({"a": {"dtype": "F8_E9M0", "shape": [24], "data_offsets": [0, 24]}}, f32))
write(bad, "missing_dtype.safetensors", st({"a": {"shape": [2, 3], "data_offsets": [0, 24]}}, f32))
write(bad, "missing_shape.safetensors", st({"a": {"dtype": "F32", "data_offsets": [0, 24]}}, f32))
write(bad, "missing_data_offsets.safetensors", st({"a": {"dtype": "F32", "shape": [2, 3]}}, f32))
write(bad, "metadata_not_string.safetensors", st({"__metadata__": {"format": 1}, **ok}, f32))
write(bad, "offsets_overlap.safetensors",
      st({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]},
          "b": {"dtype": "F32", "shape": [3], "data_offsets": [8, 20]}}, f32[:20]))
write(bad, "offsets_hole.safetensors",
      st({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
          "b": {"dtype": "F32", "shape": [3], "data_offsets": [12, 24]}}, f32))
write(bad, "offsets_not_from_zero.safetensors", st({"a": {"dtype": "F32", "shape": [5], "data_offsets": [4, 24]}}, f32))
write(bad, "offsets_backwards.safetensors", st({"a": {"dtype": "F32", "shape": [0], "data_offsets": [24, 0]}}, f32))
write(bad, "size_overflow.safetensors",
      st({"a": {"dtype": "F32", "shape": [2**62, 2**62], "data_offsets": [0, 24]}}, f32))
write(bad, "size_mismatch.safetensors", st({"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 24]}}, f32))
write(bad, "trailing_bytes.safetensors", st(ok, f32 + b"EXTRA"))
write(bad, "truncated_data.safetensors", st(ok, f32[:20]))
write(bad, "negative_shape.safetensors", st({"a": {"dtype": "F32", "shape": [-2, -3], "data_offsets": [0, 24]}}, f32))

# --- valid edge cases the reference accepts ---
write(good, "zero_sized.safetensors",
      st({"empty": {"dtype": "F32", "shape": [0, 4], "data_offsets": [0, 0]}, **ok}, f32))
write(good, "rank0.safetensors", st({"s": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]}}, struct.pack("<f", 2.5)))
write(good, "whitespace_padded.safetensors", st(ok, f32, pad=5, lead=3))
# A 3-byte U8 tensor first leaves the F32/BF16/F16/F64 data unaligned in the file.
unaligned_data = bytes([1, 2, 3]) + np.array([1.5, -2.25], "<f4").tobytes() + np.array([0x3FC0, 0xC010], "<u2").tobytes() \
    + np.array([0.5, -1.0], "<f2").tobytes() + np.array([3.0, -0.125], "<f8").tobytes() + np.array([-7, 9], "<i8").tobytes()
write(good, "unaligned.safetensors", st({
    "u8": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]},
    "f32": {"dtype": "F32", "shape": [2], "data_offsets": [3, 11]},
    "bf16": {"dtype": "BF16", "shape": [2], "data_offsets": [11, 15]},
    "f16": {"dtype": "F16", "shape": [2], "data_offsets": [15, 19]},
    "f64": {"dtype": "F64", "shape": [2], "data_offsets": [19, 35]},
    "i64": {"dtype": "I64", "shape": [2], "data_offsets": [35, 51]},
    "__metadata__": {"format": "pt"},
}, unaligned_data))
print("wrote", len(os.listdir(bad)), "malformed and", len(os.listdir(good)), "valid fixtures")
