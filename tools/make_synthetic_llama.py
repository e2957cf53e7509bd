#!/usr/bin/env python3
"""Generates a synthetic Llama-shaped family (base + N fine-tunes, bf16 safetensors, HF layout) for
benchmarks: TinyLlama-1.1B's shapes by default (hidden 2048, MLP 5632, 32 heads / 4 KV heads,
vocab 32000, 22 layers, ~1.1B parameters, 2.2 GB per model).

The values are not a trained model: the base is random bf16 with a realistic magnitude range and
each fine-tune flips random low mantissa bits of it (a small, dense task vector). That is all a
data-free merge's speed and memory depend on, and it is fast to make.

usage: make_synthetic_llama.py OUT_DIR [--layers 22] [--fine-tunes 3] [--hidden 2048] [--intermediate 5632]
"""
import argparse
import json
import os
import struct

import numpy as np


def tensor_specs(layers, hidden, intermediate, vocab, kv_dim):
    specs = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}."
        specs += [
            (p + "input_layernorm.weight", (hidden,)),
            (p + "self_attn.q_proj.weight", (hidden, hidden)),
            (p + "self_attn.k_proj.weight", (kv_dim, hidden)),
            (p + "self_attn.v_proj.weight", (kv_dim, hidden)),
            (p + "self_attn.o_proj.weight", (hidden, hidden)),
            (p + "post_attention_layernorm.weight", (hidden,)),
            (p + "mlp.gate_proj.weight", (intermediate, hidden)),
            (p + "mlp.up_proj.weight", (intermediate, hidden)),
            (p + "mlp.down_proj.weight", (hidden, intermediate)),
        ]
    specs += [("model.norm.weight", (hidden,)), ("lm_head.weight", (vocab, hidden))]
    return specs


def header(specs):
    entries, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in specs:
        size = int(np.prod(shape)) * 2
        entries[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(entries, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text


def random_bf16(rng, count):
    # Sign, exponent in [2^-12, 2^-3) and random mantissa: magnitudes like trained weights.
    sign = rng.integers(0, 2, count, dtype=np.uint16) << 15
    exponent = rng.integers(127 - 12, 127 - 3, count, dtype=np.uint16) << 7
    mantissa = rng.integers(0, 128, count, dtype=np.uint16)
    return sign | exponent | mantissa


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=22)
    ap.add_argument("--fine-tunes", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--intermediate", type=int, default=5632)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=4)
    args = ap.parse_args()
    kv_dim = args.hidden // args.heads * args.kv_heads
    specs = tensor_specs(args.layers, args.hidden, args.intermediate, args.vocab, kv_dim)
    head = header(specs)
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": args.hidden,
        "intermediate_size": args.intermediate, "num_hidden_layers": args.layers,
        "num_attention_heads": args.heads, "num_key_value_heads": args.kv_heads, "vocab_size": args.vocab,
        "rms_norm_eps": 1e-5, "max_position_embeddings": 2048, "torch_dtype": "bfloat16",
        "tie_word_embeddings": False,
    }
    names = ["base"] + [f"ft-{i}" for i in range(args.fine_tunes)]
    files = {n: open(os.path.join(args.out, n, "model.safetensors.partial"), "wb")
             for n in names if os.makedirs(os.path.join(args.out, n), exist_ok=True) is None}
    for f in files.values():
        f.write(head)
    rng = np.random.default_rng(0)
    for name, shape in specs:
        count = int(np.prod(shape))
        # Piece by piece so the generator itself stays small in memory.
        for start in range(0, count, 1 << 25):
            n = min(1 << 25, count - start)
            base = random_bf16(rng, n)
            files["base"].write(base.tobytes())
            for model in names[1:]:
                flips = rng.integers(0, 8, n, dtype=np.uint16)  # low 3 mantissa bits: a dense, small task vector
                files[model].write((base ^ flips).tobytes())
    for name, f in files.items():
        f.close()
        os.replace(f.name, os.path.join(args.out, name, "model.safetensors"))
        with open(os.path.join(args.out, name, "config.json"), "w") as c:
            json.dump(config, c, indent=2)
    params = sum(int(np.prod(s)) for _, s in specs)
    print(f"wrote {len(names)} models of {params / 1e9:.2f}B parameters to {args.out}")


if __name__ == "__main__":
    main()
