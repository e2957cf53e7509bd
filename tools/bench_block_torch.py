#!/usr/bin/env python3
# Purpose: PyTorch baseline time for forward+backward of one BERT-large encoder block on CPU (float32).
"""bench_block_torch: the PyTorch side of the kernel benchmark (DESIGN.md section 9).

One transformers BertLayer shaped like BERT-large (hidden 1024, 16 heads, intermediate 4096,
GELU erf, post-LN, eager attention, eval mode so no dropout), batch 16 x 128 tokens, float32, CPU,
torch.set_num_threads(--threads, default 2). One step = forward, loss = sum(out * probe) with a fixed
random probe, backward to the input and all weights. Median of 5 timed steps after 2 warm-ups.
Prints one JSON line: {"torch_ms": median ms per step, "gflops": flops / time / 1e9, "flops": ...}
(details go to stderr).

Tested with torch 2.13.0+cpu, transformers 5.24.0 (tools/.venv-torch):
  tools/.venv-torch/bin/python tools/bench_block_torch.py [--threads 2]
"""
import argparse
import json
import statistics
import sys
import time

import torch
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertLayer

B, S, H, HEADS, I = 16, 128, 1024, 16, 4096


def flop_count():
    # forward matmul flops = 2*B*S*(4*H*H + 2*H*I) + 4*B*S*S*H
    #   4*H*H: the query, key, value and attention-output projections; 2*H*I: the two MLP matrices;
    #   4*B*S*S*H: scores Q K^T and context P V (2*B*S*S*H each, summed over heads).
    # step flops = 3 * forward: backward needs two matmuls (d input, d weight) per forward matmul.
    # Elementwise work (softmax, GELU, LayerNorm, bias) is not counted.
    forward = 2 * B * S * (4 * H * H + 2 * H * I) + 4 * B * S * S * H
    return 3 * forward


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)

    config = BertConfig(hidden_size=H, num_attention_heads=HEADS, intermediate_size=I, hidden_act="gelu")
    config._attn_implementation = "eager"
    layer = BertLayer(config).to(torch.float32).eval()
    x0 = torch.randn(B, S, H)
    probe = torch.randn(B, S, H)

    def step():
        layer.zero_grad(set_to_none=True)
        x = x0.clone().requires_grad_(True)
        out = layer(x)
        out = out[0] if isinstance(out, tuple) else out
        (out * probe).sum().backward()
        return x.grad

    for _ in range(a.warmup):
        step()
    times = []
    for _ in range(a.repeat):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    ms = statistics.median(times) * 1e3
    flops = flop_count()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, BertLayer H={H} heads={HEADS} I={I}, "
          f"B={B} S={S}; step times ms: {[round(t * 1e3, 1) for t in times]}", file=sys.stderr)
    print(json.dumps({"torch_ms": round(ms, 3), "gflops": round(flops / (ms / 1e3) / 1e9, 3), "flops": flops}))


if __name__ == "__main__":
    main()
