#!/usr/bin/env python3
# Purpose: compare our forward pass on a real checkpoint against transformers, on unpadded positions only.
"""check_real_checkpoint: does our output for a real model match transformers?

usage: check_real_checkpoint.py MODEL_DIR INPUT_JSONL OUR_OUTPUT.safetensors [--tol-abs 1e-4 | --tol-rel 1e-3]
                                [--batch-size 16]

MODEL_DIR    an HF directory (config.json + *.safetensors), BERT family (e.g. all-MiniLM-L6-v2 from
             tools/make_minilm_inputs.py) or Llama family (e.g. SmolLM2 from make_smollm2_safetensors.py)
INPUT_JSONL  calibration JSONL: {"input_ids": [...], "attention_mask": [...], "token_type_ids": [...]}
             per line, all rows the same (padded) length; mask defaults to all ones
OUR_OUTPUT   safetensors with last_hidden_state [N,S,H] and optionally hidden_state_0..hidden_state_L
             [N,S,H] and, for causal LMs, logits [N,S,V]; any float dtype

transformers runs in float32 with eager attention and output_hidden_states=True. Key by key it prints
  max_abs = max |ours - ref|                  over unpadded positions (attention_mask == 1)
  max_rel = max |ours - ref| / max |ref|      same positions; relative to the reference's largest
                                              magnitude, since per-element ratios blow up near zero
and exits 1 if any key exceeds the tolerance (--tol-abs on max_abs, default 1e-4; or --tol-rel on
max_rel), 2 if a key is missing or misshapen.

Pick the tolerance per model: SmolLM2 has a few huge activations (|h| up to ~2.6e4 in middle
layers), so even transformers float32 vs float64 differs by ~5e-2 absolute there (~2e-6 relative):
use --tol-rel for Llama-family checkpoints. For all-MiniLM-L6-v2, f32 vs f64 is ~4e-6 absolute.

Index convention (transformers 5.24.0, see tools/make_kernel_goldens.py): hidden_state_0 is the
embedding output, hidden_state_k (0<k<L) the output of block k-1, and hidden_state_L equals
last_hidden_state, which for the Llama family is AFTER the final RMSNorm (for BERT: block L-1's output).

Tested with torch 2.13.0+cpu, transformers 5.24.0, safetensors 0.8.0 (tools/.venv-torch).
"""
import argparse
import json
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM


def load_jsonl(path):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    ids = torch.tensor([r["input_ids"] for r in rows], dtype=torch.int64)
    mask = torch.tensor([r.get("attention_mask") or [1] * len(r["input_ids"]) for r in rows], dtype=torch.int64)
    tt = None
    if all("token_type_ids" in r for r in rows):
        tt = torch.tensor([r["token_type_ids"] for r in rows], dtype=torch.int64)
    return ids, mask, tt


def reference(model_dir, ids, mask, tt, batch_size, want_logits):
    config = AutoConfig.from_pretrained(model_dir)
    causal = any(a.endswith("ForCausalLM") for a in (config.architectures or []))
    cls = AutoModelForCausalLM if causal and want_logits else AutoModel
    model = cls.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()
    ref = {}
    for b in range(0, ids.shape[0], batch_size):
        kw = {"input_ids": ids[b:b + batch_size], "attention_mask": mask[b:b + batch_size]}
        if tt is not None and config.model_type in ("bert", "roberta"):
            kw["token_type_ids"] = tt[b:b + batch_size]
        if config.model_type not in ("bert", "roberta"):
            kw["use_cache"] = False
        with torch.no_grad():
            out = model(**kw, output_hidden_states=True)
        parts = {f"hidden_state_{k}": h for k, h in enumerate(out.hidden_states)}
        parts["last_hidden_state"] = out.hidden_states[-1]  # == last_hidden_state in transformers 5
        if hasattr(out, "logits") and out.logits is not None:
            parts["logits"] = out.logits
        for k, v in parts.items():
            ref.setdefault(k, []).append(v.float())
    return {k: torch.cat(v) for k, v in ref.items()}, config


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("input_jsonl")
    ap.add_argument("our_output")
    tol = ap.add_mutually_exclusive_group()
    tol.add_argument("--tol-abs", type=float)
    tol.add_argument("--tol-rel", type=float)
    ap.add_argument("--batch-size", type=int, default=16)
    a = ap.parse_args()
    if a.tol_abs is None and a.tol_rel is None:
        a.tol_abs = 1e-4

    ids, mask, tt = load_jsonl(a.input_jsonl)
    ours = load_file(a.our_output)
    if "last_hidden_state" not in ours:
        print(f"error: {a.our_output} has no last_hidden_state", file=sys.stderr)
        sys.exit(2)
    ref, config = reference(a.model_dir, ids, mask, tt, a.batch_size, "logits" in ours)
    keep = mask.bool()
    print(f"{config.model_type}: {ids.shape[0]} examples x {ids.shape[1]} positions, "
          f"{int(keep.sum())} unpadded; tolerance "
          + (f"max_abs <= {a.tol_abs:g}" if a.tol_abs is not None else f"max_rel <= {a.tol_rel:g}"))

    keys = [k for k in ours if k in ref]
    keys.sort(key=lambda k: (k.startswith("logits"), k.startswith("last"), int(k.rsplit("_", 1)[1]) if k.startswith("hidden_state_") else 0))
    ignored = sorted(k for k in ours if k not in ref)
    if ignored:
        print(f"not compared (no such reference): {', '.join(ignored)}")
    failed = bad_shape = False
    for k in keys:
        o, r = ours[k].float(), ref[k]
        if o.shape != r.shape:
            print(f"{k:22s} shape {list(o.shape)} != reference {list(r.shape)}")
            bad_shape = True
            continue
        diff = (o - r).abs()[keep]
        max_abs = diff.max().item()
        max_rel = max_abs / max(r[keep].abs().max().item(), 1e-30)
        ok = max_abs <= a.tol_abs if a.tol_abs is not None else max_rel <= a.tol_rel
        failed |= not ok
        print(f"{k:22s} max_abs {max_abs:.3e}  max_rel {max_rel:.3e}  {'ok' if ok else 'FAIL'}")
    if bad_shape:
        sys.exit(2)
    if failed:
        print("FAILED: above tolerance")
        sys.exit(1)
    print("all within tolerance")


if __name__ == "__main__":
    main()
