#!/usr/bin/env python3
"""make_merge_fixtures: the small model families under Fixtures/merge/ and their expected merges.

Families (HF directory layouts, real tensor names, tiny shapes):
  llama-f32           Llama (hidden 32, 2 blocks, GQA 4/2 heads), f32, single model.safetensors each;
                      ft-c also has score.weight, a task head the base lacks
  llama-bf16-sharded  the same shapes in bf16 (round-to-nearest-even); base in 2 shards with an index,
                      ft-a in 3 shards, ft-b and ft-c single files
  bert-f32            BERT (hidden 32, 2 layers): base named like BertModel, fine-tunes like
                      BertForSequenceClassification (bert. prefix + classifier.*)
Fine-tunes are base + small noise sharing a common direction, so TIES's sign election matters.
Each family gets configs/<method>.yaml and expected/<method>.safetensors from tools/reference_merge.py.
Deterministic: rerunning rewrites identical bytes.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
from safetensors.numpy import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "Fixtures", "merge")
sys.path.insert(0, HERE)
from reference_merge import bf16_bits  # noqa: E402


def llama_tensors(rng):
    h, inter, kv, vocab = 32, 64, 16, 64
    t = {"model.embed_tokens.weight": rng.normal(0, 0.02, (vocab, h))}
    for i in range(2):
        p = f"model.layers.{i}."
        t.update({
            p + "input_layernorm.weight": 1 + rng.normal(0, 0.05, h),
            p + "self_attn.q_proj.weight": rng.normal(0, 0.02, (h, h)),
            p + "self_attn.k_proj.weight": rng.normal(0, 0.02, (kv, h)),
            p + "self_attn.v_proj.weight": rng.normal(0, 0.02, (kv, h)),
            p + "self_attn.o_proj.weight": rng.normal(0, 0.02, (h, h)),
            p + "post_attention_layernorm.weight": 1 + rng.normal(0, 0.05, h),
            p + "mlp.gate_proj.weight": rng.normal(0, 0.02, (inter, h)),
            p + "mlp.up_proj.weight": rng.normal(0, 0.02, (inter, h)),
            p + "mlp.down_proj.weight": rng.normal(0, 0.02, (h, inter)),
        })
    t["model.norm.weight"] = 1 + rng.normal(0, 0.05, h)
    t["lm_head.weight"] = rng.normal(0, 0.02, (vocab, h))
    return {k: v.astype(np.float32) for k, v in t.items()}


LLAMA_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 64,
    "max_position_embeddings": 128, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": False,
    "torch_dtype": "float32",
}


def bert_tensors(rng):
    h, inter = 32, 64
    t = {
        "embeddings.word_embeddings.weight": rng.normal(0, 0.02, (64, h)),
        "embeddings.position_embeddings.weight": rng.normal(0, 0.02, (32, h)),
        "embeddings.token_type_embeddings.weight": rng.normal(0, 0.02, (2, h)),
        "embeddings.LayerNorm.weight": 1 + rng.normal(0, 0.05, h),
        "embeddings.LayerNorm.bias": rng.normal(0, 0.02, h),
    }
    for i in range(2):
        p = f"encoder.layer.{i}."
        for m in ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"]:
            t[p + m + ".weight"] = rng.normal(0, 0.02, (h, h))
            t[p + m + ".bias"] = rng.normal(0, 0.02, h)
        t[p + "attention.output.LayerNorm.weight"] = 1 + rng.normal(0, 0.05, h)
        t[p + "attention.output.LayerNorm.bias"] = rng.normal(0, 0.02, h)
        t[p + "intermediate.dense.weight"] = rng.normal(0, 0.02, (inter, h))
        t[p + "intermediate.dense.bias"] = rng.normal(0, 0.02, inter)
        t[p + "output.dense.weight"] = rng.normal(0, 0.02, (h, inter))
        t[p + "output.dense.bias"] = rng.normal(0, 0.02, h)
        t[p + "output.LayerNorm.weight"] = 1 + rng.normal(0, 0.05, h)
        t[p + "output.LayerNorm.bias"] = rng.normal(0, 0.02, h)
    t["pooler.dense.weight"] = rng.normal(0, 0.02, (h, h))
    t["pooler.dense.bias"] = rng.normal(0, 0.02, h)
    return {k: v.astype(np.float32) for k, v in t.items()}


BERT_CONFIG = {
    "architectures": ["BertModel"], "model_type": "bert", "hidden_size": 32, "intermediate_size": 64,
    "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 64, "max_position_embeddings": 32,
    "type_vocab_size": 2, "hidden_act": "gelu", "layer_norm_eps": 1e-12, "torch_dtype": "float32",
}


def fine_tunes(base, rng, count=3):
    shared = {k: rng.normal(0, 0.003, v.shape).astype(np.float32) for k, v in base.items()}
    return [{k: (v + 0.7 * shared[k] + rng.normal(0, 0.003, v.shape)).astype(np.float32) for k, v in base.items()}
            for _ in range(count)]


def save_model(directory, tensors, config, dtype="F32", shards=1):
    os.makedirs(directory, exist_ok=True)
    if dtype == "BF16":
        arrays = {k: bf16_bits(v) for k, v in tensors.items()}
    else:
        arrays = dict(tensors)
    names = list(arrays)
    groups = [names[i::shards] for i in range(shards)]
    files = ["model.safetensors"] if shards == 1 else [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
    for group, file in zip(groups, files):
        path = os.path.join(directory, file)
        save_file({k: arrays[k] for k in group}, path, metadata={"format": "pt"})
        if dtype == "BF16":
            patch_dtype(path, "U16", "BF16")
    if shards > 1:
        total = sum(a.nbytes for a in arrays.values())
        index = {"metadata": {"total_size": total}, "weight_map": {k: f for g, f in zip(groups, files) for k in g}}
        json.dump(index, open(os.path.join(directory, "model.safetensors.index.json"), "w"), indent=2, sort_keys=True)
    json.dump({**config, "torch_dtype": "bfloat16" if dtype == "BF16" else "float32"},
              open(os.path.join(directory, "config.json"), "w"), indent=2, sort_keys=True)


def patch_dtype(path, old, new):
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        head = json.loads(f.read(n))
        data = f.read()
    for k, v in head.items():
        if k != "__metadata__" and v["dtype"] == old:
            v["dtype"] = new
    text = json.dumps(head, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text + data)


CONFIGS = {
    "linear": ("linear", "models:\n  - model: ../ft-a\n    parameters: {weight: 1.0}\n  - model: ../ft-b\n    parameters: {weight: 0.5}\n"
               "  - model: ../ft-c\n    parameters: {weight: 0.25}\nparameters: {normalize: true}\n"),
    "task_arithmetic": ("task_arithmetic", "models:\n  - model: ../ft-a\n    parameters: {weight: 1.0}\n  - model: ../ft-b\n    parameters: {weight: 0.6}\n"
                        "  - model: ../ft-c\n    parameters: {weight: 0.8}\nparameters: {lambda: 0.7}\n"),
    "ties": ("ties", "models:\n  - model: ../ft-a\n    parameters: {weight: 1.0, density: 0.5}\n  - model: ../ft-b\n    parameters: {weight: 0.6, density: 0.5}\n"
             "  - model: ../ft-c\n    parameters: {weight: 0.8, density: 0.5}\nparameters: {normalize: true, lambda: 1.0}\n"),
    "ties-gradient": ("ties", "models:\n  - model: ../ft-a\n    parameters: {weight: [0.2, 1.0], density: 0.5}\n"
                      "  - model: ../ft-b\n    parameters: {weight: 0.6, density: [0.3, 0.9]}\n"
                      "  - model: ../ft-c\n    parameters: {weight: 0.8, density: 0.5}\nparameters: {lambda: 0.9}\n"),
    "dare_linear": ("dare_linear", "models:\n  - model: ../ft-a\n    parameters: {weight: 1.0, density: 0.6}\n  - model: ../ft-b\n    parameters: {weight: 1.0, density: 0.6}\n"
                    "  - model: ../ft-c\n    parameters: {weight: 1.0, density: 0.6}\nparameters: {lambda: 0.5}\nseed: 7\n"),
    "dare_ties": ("dare_ties", "models:\n  - model: ../ft-a\n    parameters: {weight: 1.0, density: 0.6}\n  - model: ../ft-b\n    parameters: {weight: 0.7, density: 0.6}\n"
                  "  - model: ../ft-c\n    parameters: {weight: 0.5, density: 0.6}\nseed: 7\n"),
}


def write_family(name, tensors_fn, config, dtype="F32", shard_plan=None, prefix="", head=None, extra_head_model="ft-c"):
    root = os.path.join(ROOT, name)
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(abs(hash(name)) % 2**32 if False else sum(map(ord, name)))
    base = tensors_fn(rng)
    shard_plan = shard_plan or {}
    save_model(os.path.join(root, "base"), base, config, dtype, shard_plan.get("base", 1))
    for model, tensors in zip(["ft-a", "ft-b", "ft-c"], fine_tunes(base, rng)):
        tensors = {prefix + k: v for k, v in tensors.items()}
        if head and model == extra_head_model:
            tensors.update({k: v(rng) for k, v in head.items()})
        save_model(os.path.join(root, model), tensors, config, dtype, shard_plan.get(model, 1))
    with open(os.path.join(root, "base", "tokenizer_config.json"), "w") as f:
        json.dump({"model_max_length": 128, "tokenizer_class": "PreTrainedTokenizerFast"}, f, indent=2)
    os.makedirs(os.path.join(root, "configs"))
    os.makedirs(os.path.join(root, "expected"))
    for stem, (method, body) in CONFIGS.items():
        path = os.path.join(root, "configs", f"{stem}.yaml")
        base_line = "" if method == "linear" else "base_model: ../base\n"
        with open(path, "w") as f:
            f.write(f"merge_method: {method}\n{base_line}{body}")
        subprocess.check_call([sys.executable, os.path.join(HERE, "reference_merge.py"), path,
                               os.path.join(root, "expected", f"{stem}.safetensors")])


if __name__ == "__main__":
    write_family("llama-f32", llama_tensors, LLAMA_CONFIG,
                 head={"score.weight": lambda r: r.normal(0, 0.02, (3, 32)).astype(np.float32)})
    write_family("llama-bf16-sharded", llama_tensors, LLAMA_CONFIG, dtype="BF16",
                 shard_plan={"base": 2, "ft-a": 3},
                 head={"score.weight": lambda r: r.normal(0, 0.02, (3, 32)).astype(np.float32)})
    write_family("bert-f32", bert_tensors, BERT_CONFIG, prefix="bert.",
                 head={"classifier.weight": lambda r: r.normal(0, 0.02, (2, 32)).astype(np.float32),
                       "classifier.bias": lambda r: np.zeros(2, np.float32)})
    print("fixtures written under", os.path.normpath(ROOT))
