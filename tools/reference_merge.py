#!/usr/bin/env python3
"""reference_merge: an independent numpy implementation of StreamMerge's data-free methods.

Written from DESIGN.md section 7 and mergekit's documented semantics, not from the Swift code, and used
to produce the expected outputs under Fixtures/merge/*/expected/ (tools/make_merge_fixtures.py).
All per-element math is float32 in a fixed order (below), so a bf16 output can be compared bit for bit:
  τᵢ = f32(θᵢ) − f32(θ₀)
  linear           num = Σ wᵢ·θᵢ (left to right from 0); ÷ Σwᵢ if normalize
  task_arithmetic  acc = Σ wᵢ·τᵢ; ÷ Σwᵢ if normalize; θ₀ + λ·acc
  ties             τ̂ᵢ = τᵢ on the k = int(densityᵢ·n) largest |τᵢ| (stable: lower index first on ties);
                   dᵢ = wᵢ·τ̂ᵢ; s = Σdᵢ; majority = + if s ≥ 0; keepᵢ = sign(dᵢ) == majority;
                   mixed = Σ keepᵢ·dᵢ; with normalize ÷ (Σ keepᵢ·wᵢ, 0 → 1); θ₀ + λ·mixed
  dare_*           mask mᵢ from the counter-based stream; τ̃ᵢ = (τᵢ·mᵢ)/densityᵢ; then task arithmetic
                   (dare_linear) or the TIES sign election without trimming (dare_ties)
The DARE stream: kₜ = splitmix64(XXH3_64(canonical name, seed) + t) (mod 2⁶⁴), k₀ and k₁ its low and high
32 bits; element j draws h = mix32((j mod 2³²) ⊕ k₀ ⊕ ⌊j/2³²⌋·0x9E3779B9) ⊕ k₁ (mod 2³²), mix32(x) (triple32):
x ^= x >> 17; x *= 0xED5AD4BB; x ^= x >> 11; x *= 0xAC4C1B51; x ^= x >> 15; x *= 0x31848BAB; x ^= x >> 14,
and is kept iff h < ⌈density·2³²⌉.
Gradient parameters: numpy.interp(t, linspace(0, 1, len), values), t = i/(L−1) for block i (1 for a
single block), 0 for the embeddings and the final layers (mergekit plans both at t = 0).

usage: reference_merge.py CONFIG.yaml OUT.safetensors
"""
import json
import os
import re
import sys

import numpy as np
import xxhash
import yaml
from safetensors import safe_open
from safetensors.numpy import save_file

M64 = np.uint64(0xFFFFFFFFFFFFFFFF)
PREFIXES = {"bert": ["bert."], "roberta": ["roberta."], "llama": ["model."], "mistral": ["model."], "qwen2": ["model."]}


def splitmix64(x):
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def mix32(x):
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint32(17))
        x = x * np.uint32(0xED5AD4BB)
        x = x ^ (x >> np.uint32(11))
        x = x * np.uint32(0xAC4C1B51)
        x = x ^ (x >> np.uint32(15))
        x = x * np.uint32(0x31848BAB)
        return x ^ (x >> np.uint32(14))


def dare_mask(name, seed, t, n, density, start=0):
    """The keep mask (1.0 or 0.0) of elements start ..< start + n."""
    key = np.uint64(xxhash.xxh3_64_intdigest(name.encode(), seed=seed))
    with np.errstate(over="ignore"):
        k = int(splitmix64(np.array([key + np.uint64(t)], dtype=np.uint64))[0])
    k0, k1 = np.uint32(k & 0xFFFFFFFF), np.uint32(k >> 32)
    j = np.arange(start, start + n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        salt = k0 ^ ((j >> np.uint64(32)).astype(np.uint32) * np.uint32(0x9E3779B9))
        draw = mix32((j & np.uint64(0xFFFFFFFF)).astype(np.uint32) ^ salt) ^ k1
    return (draw.astype(np.uint64) < np.uint64(np.ceil(density * 2.0 ** 32))).astype(np.float32)


def bf16_bits(x):
    """float32 → bfloat16 bit patterns, round to nearest even; NaN → 0x7FC0 as PyTorch."""
    bits = np.asarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)
    return np.where(np.isnan(x), np.uint16(0x7FC0), rounded)


class Model:
    def __init__(self, path):
        self.path = path
        self.config = {}
        if os.path.isdir(path):
            if os.path.exists(os.path.join(path, "config.json")):
                self.config = json.load(open(os.path.join(path, "config.json")))
            index = os.path.join(path, "model.safetensors.index.json")
            if os.path.exists(index):
                files = sorted(set(json.load(open(index))["weight_map"].values()))
            elif os.path.exists(os.path.join(path, "model.safetensors")):
                files = ["model.safetensors"]
            else:
                files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
            files = [os.path.join(path, f) for f in files]
        else:
            files = [path]
        self.where, self.dtypes = {}, {}
        for f in files:
            with safe_open(f, "numpy") as h:
                for k in h.keys():
                    self.where[k] = f
        # dtypes from the raw header (numpy cannot hold bf16)
        for f in files:
            with open(f, "rb") as h:
                n = int.from_bytes(h.read(8), "little")
                header = json.loads(h.read(n))
            for k, v in header.items():
                if k != "__metadata__":
                    self.dtypes[k] = v["dtype"]

    def f32(self, name):
        """A tensor as float32 (bf16 widened exactly)."""
        f = self.where[name]
        with open(f, "rb") as h:
            n = int.from_bytes(h.read(8), "little")
            header = json.loads(h.read(n))
            info = header[name]
            h.seek(8 + n + info["data_offsets"][0])
            raw = h.read(info["data_offsets"][1] - info["data_offsets"][0])
        shape = info["shape"]
        if info["dtype"] == "BF16":
            return (np.frombuffer(raw, np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32).reshape(shape)
        if info["dtype"] == "F16":
            return np.frombuffer(raw, np.float16).astype(np.float32).reshape(shape)
        if info["dtype"] == "F64":
            return np.frombuffer(raw, np.float64).astype(np.float32).reshape(shape)
        return np.frombuffer(raw, np.float32).reshape(shape).copy()


def layer_t(canonical, blocks):
    m = re.search(r"(?:^|\.)(?:layers|layer|h|blocks)\.(\d+)\.", canonical + ".")
    if m:
        return int(m.group(1)) / (blocks - 1) if blocks > 1 else 1.0
    return 0.0


def param(value, t, default):
    if value is None:
        return default
    if isinstance(value, list):
        return float(np.interp(t, np.linspace(0, 1, len(value)), value))
    return float(value)


def merge(config_path):
    cfg = yaml.safe_load(open(config_path))
    here = os.path.dirname(os.path.abspath(config_path))
    method = cfg["merge_method"]
    base = Model(os.path.join(here, cfg["base_model"])) if cfg.get("base_model") else None
    entries = cfg["models"]
    models = [Model(os.path.join(here, e["model"])) for e in entries]
    ref = base or models[0]
    prefixes = PREFIXES.get(ref.config.get("model_type"), [])

    def canon(name):
        for p in prefixes:
            if name.startswith(p):
                return name[len(p):]
        return name

    maps = [{canon(k): k for k in m.where} for m in models]
    blocks = ref.config.get("num_hidden_layers", 1)
    top = cfg.get("parameters", {}) or {}
    seed = cfg.get("seed", 0)
    normalize_default = method in ("linear", "ties")
    out = {}
    for name in ref.where:
        c = canon(name)
        t = layer_t(c, blocks)
        ws = [np.float32(param((e.get("parameters") or {}).get("weight", top.get("weight")), t, 1.0)) for e in entries]
        ds = [param((e.get("parameters") or {}).get("density", top.get("density")), t, 1.0) for e in entries]
        lam = np.float32(param(top.get("lambda"), t, 1.0))
        normalize = bool(param(top.get("normalize"), t, normalize_default))
        xs = [m.f32(maps[i][c]) for i, m in enumerate(models)]
        wsum = np.float32(0)
        for w in ws:
            wsum = np.float32(wsum + w)
        if method == "linear":
            num = np.zeros_like(xs[0])
            for w, x in zip(ws, xs):
                num = num + w * x
            result = num / wsum if normalize else num
        else:
            b = base.f32(name)
            taus = [x - b for x in xs]
            if method == "ties":
                trimmed = []
                for tau, d in zip(taus, ds):
                    if d >= 1:
                        trimmed.append(tau)
                        continue
                    k = int(d * tau.size)
                    flat = tau.reshape(-1)
                    keep = np.zeros(flat.size, dtype=bool)
                    keep[np.argsort(-np.abs(flat), kind="stable")[:k]] = True
                    trimmed.append(np.where(keep, flat, np.float32(0)).reshape(tau.shape).astype(np.float32))
                taus = trimmed
            elif method in ("dare_linear", "dare_ties"):
                taus = [tau if d >= 1 else (tau * dare_mask(c, seed, i, tau.size, d).reshape(tau.shape)) / np.float32(d)
                        for i, (tau, d) in enumerate(zip(taus, ds))]
            if method in ("ties", "dare_ties"):
                dd = [w * tau for w, tau in zip(ws, taus)]
                s = np.zeros_like(b)
                for d in dd:
                    s = s + d
                positive = s >= 0
                mixed, div = np.zeros_like(b), np.zeros_like(b)
                for w, d in zip(ws, dd):
                    agree = np.where(positive, d > 0, d < 0)
                    mixed = mixed + np.where(agree, d, np.float32(0))
                    div = div + np.where(agree, w, np.float32(0))
                if normalize:
                    mixed = mixed / np.where(div == 0, np.float32(1), div)
                result = b + lam * mixed
            else:
                acc = np.zeros_like(b)
                for w, tau in zip(ws, taus):
                    acc = acc + w * tau
                if normalize:
                    acc = acc / wsum
                result = b + lam * acc
        out[name] = (result.astype(np.float32), ref.dtypes[name])
    return out, cfg


def write(out, cfg, path):
    dtype_override = {"bfloat16": "BF16", "float32": "F32", "float16": "F16"}.get(cfg.get("out_dtype") or cfg.get("dtype"))
    arrays, header = {}, {}
    for name, (value, dtype) in out.items():
        dtype = dtype_override or dtype
        if dtype == "BF16":
            arrays[name] = bf16_bits(value)
            header[name] = "BF16"
        elif dtype == "F16":
            arrays[name] = value.astype(np.float16)
        else:
            arrays[name] = value
    # numpy has no bf16: write uint16 bit patterns, then patch the dtype strings in the header.
    save_file(arrays, path)
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        head = json.loads(f.read(n))
        data = f.read()
    for name in header:
        head[name]["dtype"] = "BF16"
    text = json.dumps(head, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text + data)


if __name__ == "__main__":
    result, config = merge(sys.argv[1])
    write(result, config, sys.argv[2])
