#!/usr/bin/env python3
# Purpose: write tiny random transformer checkpoints + PyTorch/transformers golden activations and gradients to Fixtures/models/.
"""make_kernel_goldens: golden fixtures for the Swift transformer kernels (DESIGN.md section 8).

For each tiny config (bert-tiny, roberta-tiny, llama-tiny, llama3-tiny, qwen2-tiny, mistral-tiny)
this builds the model with transformers in float64, eager attention, eval mode, random weights
from a fixed seed, rounds every weight to float32, and writes under Fixtures/models/<name>/:

  config.json, model.safetensors   via save_pretrained, float32, HF tensor names unchanged
                                   (tied models, qwen2-tiny, have no lm_head.weight)
  golden.safetensors               inputs, activations, block gradients (float32; ids int64):
    input_ids, attention_mask      I64 [N,S]; N=3, S=8; example 0 full, 1 and 2 right-padded to
                                   lengths 5 and 3 (padded ids = the config's pad id, 1 for RoBERTa)
    token_type_ids                 I64 [N,S], BERT family only (bert-tiny example 0 has 1s at
                                   positions 4..7; roberta-tiny has type_vocab_size 1, all zero)
    hidden_state_{k}, k=0..L       [N,S,H] exactly transformers' output_hidden_states=True tuple
    last_hidden_state              [N,S,H]
    block_input_{l}, block_output_{l}  [N,S,H] the tensor entering / leaving layer module l
                                   (forward hooks on the layer modules)
    probe_{l}                      [N,S,H] fixed random (seeded) probe
    grad_input_{l}                 [N,S,H] d loss_l / d block_input_{l}
    grad.<hf tensor name>          d loss_l / d parameter, for every parameter of block l
        where loss_l = sum over ALL positions (padded ones too) of block_l(block_input_l) * probe_l,
        block_l called alone with the attention mask / rotary cos,sin the model passed it.
    BERT: pooler_output [N,H] and logits [N,3] (classifier);  RoBERTa: pooler_output [N,H];
    Llama family: logits [N,S,V] (lm_head, or the tied embedding for qwen2-tiny),
                  plus rope_inv_freq [head_dim/2], rope_cos, rope_sin [S,head_dim] (extras for
                  debugging RoPE; positions 0..S-1).

hidden_states indexing (transformers 5.24.0, found by checking against the hooks, asserted below):
  hidden_state_0 = embedding output = block_input_0; hidden_state_k = block_output_{k-1} for
  1 <= k < L; and hidden_state_L = last_hidden_state. For BERT/RoBERTa that is block_output_{L-1}
  (no final norm). For the Llama family the last entry is AFTER the final RMSNorm (model.norm):
  transformers 5.x's capture_outputs overwrites hidden_states[-1] with last_hidden_state, so
  hidden_state_L != block_output_{L-1} there; block_output_{L-1} is the pre-norm value.

Numerics: transformers' Llama-family code downcasts to float32 inside RMSNorm, the rotary cos/sin
and the attention softmax (meant for bf16/f16 runs). To get true float64 references we patch those
three spots to stay in the input dtype (same formulas) while generating; the script prints the max
difference from the stock (unpatched) forward, which is ~1e-7 relative. RoPE inv_freq keeps
transformers' own float32 values (every real HF run uses them); cos/sin are then formed in float64.
BERT/RoBERTa need no patch.

Reproducible: fixed seeds, deterministic CPU float64; rerunning rewrites identical files.
Generated with: python 3.11.7, torch 2.13.0+cpu, transformers 5.24.0, safetensors 0.8.0, numpy 2.4.6
  python3 -m venv tools/.venv-torch
  tools/.venv-torch/bin/pip install torch transformers safetensors numpy   # torch: the CPU wheel
  tools/.venv-torch/bin/python tools/make_kernel_goldens.py [--only NAME ...]
CI never runs this (no torch there); the outputs are committed.
"""
import argparse
import contextlib
import json
import os
import shutil
import sys

import numpy as np
import torch
import transformers
from safetensors import safe_open
from transformers import (BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM,
                          MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM,
                          RobertaConfig, RobertaModel)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "Fixtures", "models")
N, S = 3, 8
LENGTHS = [8, 5, 3]


def specs():
    """(name, model class, config, dotted path of the layer ModuleList, pad id, seed)."""
    common_llama = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                        vocab_size=120, max_position_embeddings=64, rms_norm_eps=1e-5)
    return [
        ("bert-tiny", BertForSequenceClassification,
         BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=64, max_position_embeddings=32, type_vocab_size=2, hidden_act="gelu",
                    num_labels=3, pad_token_id=0),
         "bert.encoder.layer", 0, 1001),
        # type_vocab_size 1 as in the real roberta-base; pad_token_id 1 so position ids start at 2.
        ("roberta-tiny", RobertaModel,
         RobertaConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=64, max_position_embeddings=40, type_vocab_size=1, hidden_act="gelu",
                       pad_token_id=1, bos_token_id=0, eos_token_id=2),
         "encoder.layer", 1, 1002),
        ("llama-tiny", LlamaForCausalLM,
         LlamaConfig(**common_llama, num_key_value_heads=2, tie_word_embeddings=False,
                     rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
         "model.layers", 0, 1003),
        # head_dim 32 (4 heads x 32 = 128 != hidden 32, as transformers allows): with theta 5e5 and
        # original_max_position_embeddings 16 the llama3 rule then smooths two frequencies
        # (wavelengths 6.3 and 14.3, between 16/4 and 16/1) and divides the other 14 by 8.
        # (head_dim 8 would smooth only one.) No frequency is left unchanged: 2*pi > 16/4 always.
        ("llama3-tiny", LlamaForCausalLM,
         LlamaConfig(**common_llama, num_key_value_heads=2, head_dim=32, tie_word_embeddings=False,
                     rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                      "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                      "original_max_position_embeddings": 16}),
         "model.layers", 0, 1004),
        ("qwen2-tiny", Qwen2ForCausalLM,
         Qwen2Config(**common_llama, num_key_value_heads=2, tie_word_embeddings=True,
                     rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
         "model.layers", 0, 1005),
        ("mistral-tiny", MistralForCausalLM,
         MistralConfig(**common_llama, num_key_value_heads=1, tie_word_embeddings=False, sliding_window=None,
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
         "model.layers", 0, 1006),
    ]


def get_path(obj, dotted):
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


# ---- float64-preserving replacements for transformers' internal float32 downcasts ----

def _rms_forward(self, hidden_states):
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


def _rope_forward(self, x, position_ids):
    freqs = position_ids[..., None].to(x.dtype) * self.inv_freq.to(device=x.device, dtype=x.dtype)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos() * self.attention_scaling, emb.sin() * self.attention_scaling


def _make_eager(repeat_kv):
    def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        key_states = repeat_kv(key, module.num_key_value_groups)
        value_states = repeat_kv(value, module.num_key_value_groups)
        attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
        if attention_mask is not None:
            attn_weights = attn_weights + attention_mask
        attn_weights = torch.nn.functional.softmax(attn_weights, dim=-1)  # no float32 downcast
        attn_output = torch.matmul(attn_weights, value_states).transpose(1, 2).contiguous()
        return attn_output, attn_weights
    return eager_attention_forward


@contextlib.contextmanager
def float64_patches(model):
    """Patch RMSNorm / rotary / eager attention of the model's modeling module while active."""
    saved = []
    for mod in model.modules():
        cls = type(mod)
        name = cls.__name__
        if name.endswith("RMSNorm") and not any(c is cls for c, _, _ in saved):
            saved.append((cls, "forward", cls.forward))
            cls.forward = _rms_forward
        elif name.endswith("RotaryEmbedding") and not any(c is cls for c, _, _ in saved):
            saved.append((cls, "forward", cls.forward))
            cls.forward = _rope_forward
    modeling = sys.modules[type(model).__module__]
    if hasattr(modeling, "repeat_kv"):
        saved.append((modeling, "eager_attention_forward", modeling.eager_attention_forward))
        modeling.eager_attention_forward = _make_eager(modeling.repeat_kv)
    try:
        yield
    finally:
        for owner, attr, orig in saved:
            setattr(owner, attr, orig)


# ---- model construction ----

def init_weights(model, gen):
    """Non-trivial random weights: N(0, 0.15) matrices, N(0, 0.2) embeddings, biases N(0, 0.1),
    norm weights 1 + N(0, 0.2) (not all ones, so a kernel that ignores them fails), norm biases N(0, 0.1).
    Then every value is rounded to float32, since Swift will read the float32 file."""
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            is_norm = "norm" in name.lower()
            if is_norm and name.endswith("weight"):
                v = 1.0 + 0.2 * torch.randn(p.shape, generator=gen)
            elif name.endswith("bias"):
                v = 0.1 * torch.randn(p.shape, generator=gen)
            elif "embed" in name:
                v = 0.2 * torch.randn(p.shape, generator=gen)
            else:
                v = 0.15 * torch.randn(p.shape, generator=gen)
            p.copy_(v.to(torch.float32).to(torch.float64))


def build(cls, config, seed):
    config._attn_implementation = "eager"
    torch.set_default_dtype(torch.float64)
    model = cls(config)
    model.config._attn_implementation = "eager"
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    init_weights(model, gen)
    return model, gen


def make_inputs(name, config, pad_id, gen):
    ids = torch.randint(3, config.vocab_size, (N, S), generator=gen)
    mask = torch.zeros(N, S, dtype=torch.int64)
    for i, n in enumerate(LENGTHS):
        mask[i, :n] = 1
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, pad_id))
    inputs = {"input_ids": ids, "attention_mask": mask}
    if name.startswith("bert"):
        tt = torch.zeros(N, S, dtype=torch.int64)
        tt[0, 4:] = 1  # a second segment in the full-length example
        inputs["token_type_ids"] = tt
    elif name.startswith("roberta"):
        inputs["token_type_ids"] = torch.zeros(N, S, dtype=torch.int64)
    return inputs


def forward(model, inputs, layers):
    """Run the whole model once; capture each layer's call (args, kwargs) and output via hooks."""
    calls, outs, handles = {}, {}, []
    for l, layer in enumerate(layers):
        def pre(mod, args, kwargs, l=l):
            calls[l] = (args, kwargs)

        def post(mod, args, kwargs, output, l=l):
            outs[l] = output[0] if isinstance(output, tuple) else output
        handles.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(layer.register_forward_hook(post, with_kwargs=True))
    base_out = {}
    handles.append(model.base_model.register_forward_hook(
        lambda m, a, o: base_out.update(last=o.last_hidden_state,
                                        pooler=getattr(o, "pooler_output", None))))
    extra = {} if isinstance(model, RobertaModel) or model.config.model_type == "bert" else {"use_cache": False}
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True, **extra)
    for h in handles:
        h.remove()
    return out, calls, outs, base_out


def block_input(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]


def block_grads(model, layers_path, layer, l, args, kwargs, probe):
    """loss = sum(layer(x) * probe) over all positions; returns output, dx, {hf name: dparam}."""
    x = block_input(args, kwargs).detach().clone().requires_grad_(True)
    rest_kwargs = {k: v for k, v in kwargs.items() if k != "hidden_states"}
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        y = layer(x, *args[1:], **rest_kwargs)
        y = y[0] if isinstance(y, tuple) else y
        loss = (y * probe).sum()
        loss.backward()
    grads = {f"grad.{layers_path}.{l}.{pn}": p.grad.detach().clone() for pn, p in layer.named_parameters()}
    return y.detach(), x.grad.detach().clone(), grads


def write_safetensors(path, tensors, metadata):
    """Plain safetensors writer with a sorted header: safetensors' own save_file orders
    __metadata__ by a hash map, so its bytes change from run to run; these do not."""
    dtypes = {torch.float32: "F32", torch.int64: "I64"}
    header = {"__metadata__": dict(sorted(metadata.items()))}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        raw = t.numpy().tobytes()  # little-endian on this (x86-64) machine
        header[name] = {"dtype": dtypes[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    with open(path, "wb") as f:
        f.write(len(hb).to_bytes(8, "little"))
        f.write(hb)
        for raw in blobs:
            f.write(raw)


def f32(t):
    return t.detach().to(torch.float32).contiguous()


def maxdiff(a, b):
    return (a.to(torch.float64) - b.to(torch.float64)).abs().max().item()


def generate(name, cls, config, layers_path, pad_id, seed):
    out_dir = os.path.join(ROOT, name)
    model, gen = build(cls, config, seed)
    layers = get_path(model, layers_path)
    L = len(layers)
    inputs = make_inputs(name, config, pad_id, gen)

    stock_out, _, _, _ = forward(model, inputs, layers)
    with float64_patches(model):
        out, calls, outs, base_out = forward(model, inputs, layers)
        hs = out.hidden_states
        assert len(hs) == L + 1
        print(f"[{name}] max |patched f64 - stock transformers| over hidden states: "
              f"{max(maxdiff(a, b) for a, b in zip(hs, stock_out.hidden_states)):.2e}")

        g = {k: v.clone() for k, v in inputs.items()}
        first_in = block_input(*calls[0])
        for k in range(L + 1):
            g[f"hidden_state_{k}"] = f32(hs[k])
        g["last_hidden_state"] = f32(base_out["last"])
        for l in range(L):
            args, kwargs = calls[l]
            x_in = block_input(args, kwargs)
            g[f"block_input_{l}"] = f32(x_in)
            g[f"block_output_{l}"] = f32(outs[l])
            probe = torch.randn(N, S, config.hidden_size, generator=gen).to(torch.float32).to(torch.float64)
            y, dx, grads = block_grads(model, layers_path, layers[l], l, args, kwargs, probe)
            assert maxdiff(y, outs[l]) == 0.0, "re-called block differs from the in-model call"
            g[f"probe_{l}"] = f32(probe)
            g[f"grad_input_{l}"] = f32(dx)
            g.update({k: f32(v) for k, v in grads.items()})

        # Check (not assume) how hidden_states line up with the hooked block inputs/outputs.
        assert maxdiff(hs[0], first_in) == 0.0
        for k in range(1, L):
            assert maxdiff(hs[k], outs[k - 1]) == 0.0
        assert maxdiff(hs[L], base_out["last"]) == 0.0
        last_is_block_out = maxdiff(hs[L], outs[L - 1]) == 0.0
        print(f"[{name}] hidden_states[{L}] is {'block_output' if last_is_block_out else 'AFTER the final norm, not block_output'}_{L - 1}")

        if hasattr(model, "lm_head"):
            g["logits"] = f32(out.logits)
            rot = model.model.rotary_emb
            pos = torch.arange(S)[None]
            cos, sin = rot(hs[0], pos)
            g["rope_inv_freq"] = f32(rot.inv_freq)
            g["rope_cos"], g["rope_sin"] = f32(cos[0]), f32(sin[0])
        elif config.model_type == "bert":
            g["pooler_output"] = f32(base_out["pooler"])
            g["logits"] = f32(out.logits)
        else:
            g["pooler_output"] = f32(base_out["pooler"])

    if config.model_type == "llama":
        default_inv = 1.0 / (config.rope_parameters["rope_theta"]
                             ** (torch.arange(0, config.head_dim, 2, dtype=torch.float64) / config.head_dim))
        inv = model.model.rotary_emb.inv_freq.to(torch.float64)
        ratio = (inv / default_inv).numpy()
        print(f"[{name}] rope inv_freq / default: {np.array2string(ratio, precision=4, max_line_width=200)}"
              f"  (1=unchanged, 0.125=rescaled, between=smoothed)")

    # save_pretrained in float32 (weights already hold float32 values, so this is exact)
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    model.to(torch.float32)
    model.save_pretrained(out_dir, safe_serialization=True)
    model.to(torch.float64)
    for extra in os.listdir(out_dir):  # keep only config.json + model.safetensors
        if extra not in ("config.json", "model.safetensors"):
            os.remove(os.path.join(out_dir, extra))
    legacy_rope_config(os.path.join(out_dir, "config.json"))
    with safe_open(os.path.join(out_dir, "model.safetensors"), "pt") as f:
        saved_names = set(f.keys())
        assert all(f.get_slice(k).get_dtype() == "F32" for k in saved_names)
    grad_names = {k[len("grad."):] for k in g if k.startswith("grad.")}
    missing = grad_names - saved_names
    assert not missing, f"gradient names not in model.safetensors: {sorted(missing)}"

    meta = {"generator": "tools/make_kernel_goldens.py", "torch": torch.__version__,
            "transformers": transformers.__version__, "seed": str(seed),
            "loss": "loss_l = sum(block_l(block_input_l) * probe_l) over all N*S positions",
            "lengths": json.dumps(LENGTHS)}
    write_safetensors(os.path.join(out_dir, "golden.safetensors"), g, meta)
    verify(name, cls, out_dir, inputs, layers_path, pad_id, g)
    for fn in sorted(os.listdir(out_dir)):
        print(f"[{name}]   {fn}: {os.path.getsize(os.path.join(out_dir, fn))} bytes")
    return g


def legacy_rope_config(path):
    """transformers 5 writes RoPE settings as "rope_parameters"; the checkpoints people actually have
    (and that transformers 5 still reads) use top-level "rope_theta" plus "rope_scaling" (null for
    default RoPE). Rewrite to that form so the fixtures look like real configs; verify() reloads it."""
    with open(path) as f:
        cfg = json.load(f)
    rp = cfg.pop("rope_parameters", None)
    if rp is None:
        return
    rp = dict(rp)
    cfg["rope_theta"] = rp.pop("rope_theta")
    cfg["rope_scaling"] = None if rp.get("rope_type", "default") == "default" else rp
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")


def verify(name, cls, out_dir, inputs, layers_path, pad_id, g):
    """Reload the saved float32 checkpoint in float64, recompute, compare; check padding invariance."""
    model = cls.from_pretrained(out_dir, dtype=torch.float64, attn_implementation="eager").eval()
    layers = get_path(model, layers_path)
    L = len(layers)
    with float64_patches(model):
        out, calls, outs, base_out = forward(model, inputs, layers)
        d = max(maxdiff(out.hidden_states[k], g[f"hidden_state_{k}"]) for k in range(L + 1))
        if "logits" in g:
            d = max(d, maxdiff(out.logits, g["logits"]))
        for l in range(L):
            args, kwargs = calls[l]
            probe = g[f"probe_{l}"].to(torch.float64)
            _, dx, grads = block_grads(model, layers_path, layers[l], l, args, kwargs, probe)
            d = max(d, maxdiff(dx, g[f"grad_input_{l}"]), *(maxdiff(v, g[k]) for k, v in grads.items()))
        print(f"[{name}] reload check: max |recomputed - golden| = {d:.2e} (float32 storage rounding)")
        if "rope_inv_freq" in g:
            d = max(d, maxdiff(model.model.rotary_emb.inv_freq, g["rope_inv_freq"]))
        assert d < 1e-5

        # Changing the padded tokens must not move any unpadded position.
        gen = torch.Generator().manual_seed(7)
        alt = {k: v.clone() for k, v in inputs.items()}
        other = torch.randint(3, model.config.vocab_size, (N, S), generator=gen)
        alt["input_ids"] = torch.where(inputs["attention_mask"].bool(), inputs["input_ids"], other)
        out2, _, _, _ = forward(model, alt, layers)
        keep = inputs["attention_mask"].bool()
        dp = max((a[keep] - b[keep]).abs().max().item() for a, b in zip(out.hidden_states, out2.hidden_states))
        print(f"[{name}] padding invariance: padded ids changed -> max change at unpadded positions {dp:.2e}")
        assert dp < 1e-12


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="*", help="generate only these fixture names")
    a = ap.parse_args()
    torch.set_num_threads(1)  # the machine is shared; these models are tiny
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    for spec in specs():
        if a.only and spec[0] not in a.only:
            continue
        generate(*spec)


if __name__ == "__main__":
    main()
