#!/usr/bin/env python3
"""prodistill_reference: an independent PyTorch reference of StreamMerge's ProDistill.

Written from DESIGN.md sections 3, 4, 5, 7 and the ProDistill paper's Algorithm 1, not from the Swift
code. It produces the expected outputs under Fixtures/distill/ (tools/make_distill_fixtures.py) and
the PyTorch side of the speed comparison (tools/bench_prodistill.py). The text below is the contract
the Swift implementation follows; parity tests compare against files this script wrote.

usage: prodistill_reference.py CONFIG.yaml --out OUT.safetensors --report OUT.json [--threads 2]
                               [--time-layer L [--fast-inputs]] [--epochs N]

Inputs
  A StreamMerge config (merge_method: prodistill; base_model; models: [{model, calibration}]; seed;
  distill: {epochs, lr, batch_size, init, max_length, loss, include_padding}); relative paths resolve
  against the config file's directory. Defaults as DESIGN.md: epochs 50, lr 0.01, batch_size 16,
  init 0.3 (0.5 when T <= 2), max_length 128, loss sum, include_padding false, seed 0.
  Models are HF directories (config.json + model.safetensors or a sharded index) or one .safetensors
  file next to a config.json. Tensor names are matched after stripping the family prefix: `bert.` or
  `roberta.` for the BERT family (bert, roberta), `model.` for the Llama family (llama, mistral,
  qwen2). Tensors only in a fine-tune (e.g. `classifier.*`, `score.*`) are task heads and ignored.
  Every tensor of the base must be in every fine-tune with the same shape. Float tensors of any
  dtype (F32/F16/BF16/F64) are read as float32; integer tensors are copied from the base unchanged.

Layers (on stripped names)
  embeddings  `embeddings.*` (BERT family) / `embed_tokens.*` (Llama family)
  block l     `encoder.layer.l.*` / `layers.l.*`, l = 0..L-1
  final       every other tensor of the base (BERT pooler, Llama `norm.weight`, `lm_head.weight`)

Algorithm (T fine-tunes θ1..θT of base θ0; τi = θi − θ0 per tensor, in float32)
  1. Embeddings and final layers: task arithmetic θ0 + λ0·Σi τi (not trained).
  2. Calibration: task i's JSONL lines {"input_ids", "attention_mask"?, "token_type_ids"?} (mask
     default all 1, types default all 0), in file order, each truncated to max_length. Batches are
     consecutive chunks of batch_size examples of ONE task (the last may be smaller), listed
     task-major: all batches of task 0, then task 1, ... Each batch is right-padded to the longest
     example in that batch with pad id = config pad_token_id (0 when null), mask 0, token type 0.
     |Di| = number of examples of task i.
  3. z1 (merged path) = embeddings output of the merged (step 1) embeddings; z2 (teacher path) =
     embeddings output of the example's own fine-tune θi. Computed by transformers' own model
     (BertModel/RobertaModel/LlamaModel/...: RoBERTa position ids from the input ids, token types
     for the BERT family), captured at the input of block 0.
  4. For each block l = 0..L-1:
     - Teacher targets y_b = block_l(θi; z2_b) for every batch b of task i (they become the next z2).
     - Coefficients λi,p initialised to λ0 for every element of every parameter p of the block
       (element-wise, one set per task). Student weights W_p = θ0_p + Σi λi,p ⊙ τi,p.
     - Loss of batch b of task i: c_b · Σ over counted tokens and hidden dims of
       (block_l(W; z1_b) − y_b)², counted tokens = attention_mask 1 (every position, padding included,
       when include_padding). loss: sum → c_b = 1/(2·T·|Di|) (the paper's objective);
       loss: mean → c_b = 1/(number of counted tokens in the batch × hidden), i.e. the mean over the
       summed elements (with include_padding that is every position of the padded batch).
     - torch.optim.Adam over all λ (betas 0.9/0.999, eps 1e-8, lr, no weight decay), fresh per block;
       one step per batch; zero_grad every step.
     - Batch order: epoch e (0-based) visits the batch list of step 2 permuted by Fisher–Yates with
       a counter-based generator (all arithmetic mod 2^64):
         splitmix64(x): z = x + 0x9E3779B97F4A7C15; z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9;
                        z = (z ^ (z >> 27)) * 0x94D049BB133111EB; return z ^ (z >> 31)
         key = splitmix64(splitmix64(seed) + (l << 32) + e)
         order = [0, 1, ..., n−1]; for j = n−1 down to 1: k = splitmix64(key + j) mod (j + 1);
         swap order[j], order[k]
     - After E epochs the merged block is W* = θ0 + Σi λi* ⊙ τi (float32).
     - Reported: loss_before = Σ over all batches of the batch losses (with c_b) at λ = λ0, before
       training; loss_after = the same at λ*. lambda_mean[i] = mean of λi* over all elements of the
       block. seconds = wall time of the whole block (targets, training, next inputs).
     - Next inputs: z1 ← block_l(W*; z1), z2 ← y.
  Blocks run in float32, eval mode (no dropout), eager attention, with the attention mask (padding;
  causal + padding for the Llama family) and rotary embeddings exactly as transformers builds them:
  the kwargs each layer receives are captured from a forward of transformers' model on the batch, and
  the layer module itself (BertLayer, LlamaDecoderLayer, ...) is called through
  torch.func.functional_call with the block's weights. Nothing of the block is reimplemented.
  Padded positions (they matter only with include_padding): pad tokens are embedded like any token
  (pad id, token type 0; RoBERTa gives them position padding_idx); BERT family: a padded query attends
  to every real key; Llama family: padded query j attends to the real keys k <= j, position ids run
  0..S−1 through the padding (transformers' create_causal_mask with a right-padded mask).

Outputs
  --out: safetensors with every base tensor under the BASE's tensor names, float32 (integer tensors
  unchanged), header keys sorted (deterministic bytes). --report: JSON with settings, the batch list,
  and per block {block, loss_before, loss_after, lambda_mean, steps, seconds, batch_order (per epoch)}.
  --time-layer L: runs blocks < L as usual (or as plain task arithmetic with --fast-inputs), computes
  block L's targets, then times only block L's training loop and prints one JSON line
  {"layer": L, "seconds", "steps", "ms_per_step", ...}; --out/--report are then optional.
  --epochs N overrides distill.epochs (e.g. a shorter timing run).

A second formulation, `formulation="collapse"` (DESIGN.md section 5: keep W and Adam moments M, V of
G = ∂L/∂W; ΔW = −lr·M̂ ⊙ Σi τi²/(|τi|·√V̂ + ε)), is available to tools/make_distill_fixtures.py,
which checks it against this explicit-λ Adam in float64.
"""
import argparse
import json
import os
import struct
import sys
import time

import torch
import yaml
from safetensors import safe_open

MASK64 = (1 << 64) - 1
BETAS = (0.9, 0.999)
EPS = 1e-8
FAMILIES = {  # model_type -> (name prefixes to strip, embeddings prefix, block prefix)
    "bert": (("bert.", "roberta."), "embeddings.", "encoder.layer."),
    "roberta": (("bert.", "roberta."), "embeddings.", "encoder.layer."),
    "llama": (("model.",), "embed_tokens.", "layers."),
    "mistral": (("model.",), "embed_tokens.", "layers."),
    "qwen2": (("model.",), "embed_tokens.", "layers."),
}
DISTILL_KEYS = {"epochs", "lr", "batch_size", "init", "max_length", "loss", "include_padding",
                "granularity", "activation_dtype", "head_pooling", "mixed"}
TOP_KEYS = {"merge_method", "base_model", "models", "parameters", "dtype", "out_dtype", "out_shard_size",
            "seed", "tokenizer_source", "distill", "name"}


# ---------------------------------------------------------------- deterministic batch order

def splitmix64(x):
    z = (x + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def epoch_order(n, seed, layer, epoch):
    key = splitmix64((splitmix64(seed & MASK64) + (layer << 32) + epoch) & MASK64)
    order = list(range(n))
    for j in range(n - 1, 0, -1):
        k = splitmix64((key + j) & MASK64) % (j + 1)
        order[j], order[k] = order[k], order[j]
    return order


# ---------------------------------------------------------------- config and inputs

class ConfigError(Exception):
    pass


def load_settings(path, epochs=None):
    cfg = yaml.safe_load(open(path))
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: the config must be a mapping")
    for k in cfg:
        if k not in TOP_KEYS:
            raise ConfigError(f"{path}: unknown key '{k}'")
    if cfg.get("merge_method") != "prodistill":
        raise ConfigError(f"{path}: merge_method must be prodistill, not {cfg.get('merge_method')!r}")
    root = os.path.dirname(os.path.abspath(path))

    def resolve(p):
        return p if os.path.isabs(p) else os.path.normpath(os.path.join(root, p))
    models = cfg.get("models") or []
    if not models or "base_model" not in cfg:
        raise ConfigError(f"{path}: needs base_model and a non-empty models list")
    for m in models:
        if "calibration" not in m:
            raise ConfigError(f"{path}: model {m.get('model')} has no calibration file")
    d = cfg.get("distill") or {}
    for k in d:
        if k not in DISTILL_KEYS:
            raise ConfigError(f"{path}: unknown key '{k}' in distill")
    if d.get("granularity", "element") != "element":
        raise ConfigError(f"{path}: this reference implements granularity: element only")
    if d.get("mixed", False):
        raise ConfigError(f"{path}: this reference implements single-task batches only (mixed: false)")
    if d.get("activation_dtype", "float32") != "float32":
        raise ConfigError(f"{path}: this reference keeps activations in float32 only")
    T = len(models)
    s = {
        "config": os.path.abspath(path),
        "base": resolve(cfg["base_model"]),
        "models": [resolve(m["model"]) for m in models],
        "calibration": [resolve(m["calibration"]) for m in models],
        "seed": int(cfg.get("seed", 0)),
        "epochs": int(d.get("epochs", 50)),
        "lr": float(d.get("lr", 0.01)),
        "batch_size": int(d.get("batch_size", 16)),
        "init": float(d.get("init", 0.5 if T <= 2 else 0.3)),
        "max_length": int(d.get("max_length", 128)),
        "loss": d.get("loss", "sum"),
        "include_padding": bool(d.get("include_padding", False)),
    }
    if epochs is not None:
        s["epochs"] = int(epochs)
    if s["loss"] not in ("sum", "mean"):
        raise ConfigError(f"{path}: distill.loss must be sum or mean")
    return s


def checkpoint_files(path):
    if os.path.isfile(path):
        return os.path.dirname(path), [path]
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        files = sorted(set(json.load(open(index))["weight_map"].values()))
    elif os.path.exists(os.path.join(path, "model.safetensors")):
        files = ["model.safetensors"]
    else:
        files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    return path, [os.path.join(path, f) for f in files]


def load_checkpoint(path):
    """{name: tensor}, float tensors as float32, others unchanged."""
    out = {}
    for f in checkpoint_files(path)[1]:
        with safe_open(f, framework="pt") as fh:
            for k in fh.keys():
                t = fh.get_tensor(k)
                out[k] = t.to(torch.float32) if t.is_floating_point() else t
    return out


def strip_name(name, prefixes):
    for p in prefixes:
        if name.startswith(p):
            return name[len(p):]
    return name


def read_calibration(path, max_length):
    examples = []
    for n, line in enumerate(open(path), 1):
        if not line.strip():
            continue
        ex = json.loads(line)
        if "input_ids" not in ex:
            raise ConfigError(f"{path}:{n}: needs input_ids (text examples are not supported here)")
        ids = [int(x) for x in ex["input_ids"]][:max_length]
        mask = [int(x) for x in ex.get("attention_mask", [1] * len(ids))][:max_length]
        types = [int(x) for x in ex.get("token_type_ids", [0] * len(ids))][:max_length]
        if not ids or len(mask) != len(ids) or len(types) != len(ids):
            raise ConfigError(f"{path}:{n}: empty example or lengths of input_ids/attention_mask/token_type_ids differ")
        examples.append((ids, mask, types))
    if not examples:
        raise ConfigError(f"{path}: no examples")
    return examples


def make_batches(calib, batch_size, pad_id, bert_family):
    """Task-major list of single-task batches, each right-padded to its longest example."""
    batches = []
    for task, examples in enumerate(calib):
        for start in range(0, len(examples), batch_size):
            chunk = examples[start:start + batch_size]
            S = max(len(ids) for ids, _, _ in chunk)
            ids = torch.full((len(chunk), S), pad_id, dtype=torch.int64)
            mask = torch.zeros((len(chunk), S), dtype=torch.int64)
            types = torch.zeros((len(chunk), S), dtype=torch.int64)
            for r, (i, m, t) in enumerate(chunk):
                ids[r, :len(i)] = torch.tensor(i)
                mask[r, :len(m)] = torch.tensor(m)
                types[r, :len(t)] = torch.tensor(t)
            inputs = {"input_ids": ids, "attention_mask": mask}
            if bert_family:
                inputs["token_type_ids"] = types
            else:
                inputs["use_cache"] = False
            batches.append({"task": task, "first": start, "count": len(chunk), "inputs": inputs, "mask": mask})
    return batches


# ---------------------------------------------------------------- transformers plumbing

class _Stop(Exception):
    pass


def build_model(base_dir, dtype):
    import transformers
    config = transformers.AutoConfig.from_pretrained(base_dir)
    config._attn_implementation = "eager"
    model = transformers.AutoModel.from_config(config, attn_implementation="eager")
    model.config._attn_implementation = "eager"
    return model.to(dtype).eval(), config


def model_layers(model, block_prefix):
    return model.get_submodule(block_prefix.rstrip("."))


def capture(model, layers, params, inputs, all_layers):
    """Run transformers' model with `params` overriding its parameters; return the input of block 0
    and, if all_layers, the (extra args, kwargs) every block receives."""
    calls, handles = {}, []
    for l, layer in enumerate(layers):
        if l > 0 and not all_layers:
            break

        def pre(mod, args, kwargs, l=l):
            x = args[0] if args else kwargs["hidden_states"]
            kw = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            calls[l] = (x.detach(), tuple(args[1:]), kw)
            if not all_layers:
                raise _Stop()
        handles.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
    try:
        with torch.no_grad():
            torch.func.functional_call(model, params, args=(), kwargs=inputs, strict=False)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    return calls


def call_block(layer, weights, z, call):
    _, args, kwargs = call
    out = torch.func.functional_call(layer, weights, (z,) + args, kwargs)
    return out[0] if isinstance(out, tuple) else out


# ---------------------------------------------------------------- the algorithm

class ProDistill:
    def __init__(self, settings, dtype=torch.float32, log=None):
        self.s = s = settings
        self.dtype = dtype
        self.log = log or (lambda *a: print(*a, file=sys.stderr))
        base_dir = checkpoint_files(s["base"])[0]
        self.model, self.config = build_model(base_dir, dtype)
        mt = self.config.model_type
        if mt not in FAMILIES:
            raise ConfigError(f"{s['base']}: model_type {mt!r} is not supported (supported: {sorted(FAMILIES)})")
        self.prefixes, self.emb_prefix, self.block_prefix = FAMILIES[mt]
        self.bert_family = mt in ("bert", "roberta")
        self.T = T = len(s["models"])
        self.L = self.config.num_hidden_layers
        self.layers = model_layers(self.model, self.block_prefix)

        base = load_checkpoint(s["base"])
        self.base_names = {}  # stripped -> base name
        self.theta0 = {}
        for name, t in base.items():
            k = strip_name(name, self.prefixes)
            if k in self.base_names:
                raise ConfigError(f"{s['base']}: {name} and {self.base_names[k]} collide after prefix stripping")
            self.base_names[k] = name
            self.theta0[k] = t
        self.tau = {k: [] for k in self.theta0 if self.theta0[k].is_floating_point()}
        self.heads = []
        for path in s["models"]:
            ft = {strip_name(n, self.prefixes): (n, t) for n, t in load_checkpoint(path).items()}
            for k in self.theta0:
                if k not in ft:
                    raise ConfigError(f"{path}: missing tensor {self.base_names[k]}")
                if tuple(ft[k][1].shape) != tuple(self.theta0[k].shape):
                    raise ConfigError(f"{path}: tensor {ft[k][0]} has shape {tuple(ft[k][1].shape)}, "
                                      f"the base {tuple(self.theta0[k].shape)}")
                if k in self.tau:
                    self.tau[k].append(ft[k][1] - self.theta0[k])  # float32
            self.heads.append(sorted(n for k, (n, _) in ft.items() if k not in self.theta0))
        # float32 task vectors, then the working dtype
        self.theta0 = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in self.theta0.items()}
        self.tau = {k: torch.stack(v).to(dtype) for k, v in self.tau.items()}

        self.groups = {"embeddings": [], "final": [], "blocks": [[] for _ in range(self.L)]}
        for k in sorted(self.theta0):
            if k.startswith(self.emb_prefix):
                self.groups["embeddings"].append(k)
            elif k.startswith(self.block_prefix):
                l = int(k[len(self.block_prefix):].split(".")[0])
                self.groups["blocks"][l].append(k)
            else:
                self.groups["final"].append(k)

        pad = self.config.pad_token_id
        self.pad_id = 0 if pad is None else int(pad)
        self.calib = [read_calibration(p, s["max_length"]) for p in s["calibration"]]
        self.n_examples = [len(c) for c in self.calib]
        vocab = self.config.vocab_size
        types = getattr(self.config, "type_vocab_size", 1) if self.bert_family else None
        for path, examples in zip(s["calibration"], self.calib):
            for n, (ids, _, tt) in enumerate(examples, 1):
                if min(ids) < 0 or max(ids) >= vocab:
                    raise ConfigError(f"{path}: example {n} has a token id outside 0..{vocab - 1}")
                if types is not None and (min(tt) < 0 or max(tt) >= types):
                    raise ConfigError(f"{path}: example {n} has a token type outside 0..{types - 1}")
        self.batches = make_batches(self.calib, s["batch_size"], self.pad_id, self.bert_family)
        H = self.config.hidden_size
        for b in self.batches:
            m = b["mask"].to(dtype)
            if s["include_padding"]:
                m = torch.ones_like(m)
            b["weight"] = m[..., None]
            if s["loss"] == "sum":
                b["c"] = 1.0 / (2.0 * T * self.n_examples[b["task"]])
            else:
                b["c"] = 1.0 / (float(m.sum()) * H)

    # -- helpers
    def task_arithmetic(self, k):
        t = self.theta0[k]
        if not t.is_floating_point():
            return t
        return t + self.s["init"] * self.tau[k].sum(0)

    def block_params(self, l):
        """(layer-relative parameter names, stripped names) of block l; other stored tensors of the
        block (buffers) are copied from the base."""
        prefix = f"{self.block_prefix}{l}."
        layer_params = dict(self.layers[l].named_parameters())
        rel = {k[len(prefix):]: k for k in self.groups["blocks"][l]}
        missing = sorted(set(layer_params) - set(rel))
        if missing:
            raise ConfigError(f"{self.s['base']}: block {l} lacks {missing}")
        return [(r, rel[r]) for r in sorted(rel) if r in layer_params]

    def batch_loss(self, out, b, y):
        return ((out - y) ** 2 * b["weight"]).sum() * b["c"]

    # -- the run
    def embeddings(self):
        """z1, z2 and the layer kwargs for every batch."""
        emb_keys = [k for k in self.groups["embeddings"] if self.theta0[k].is_floating_point()]
        own = dict(self.model.named_parameters())
        missing = [k for k in own if k.startswith(self.emb_prefix) and k not in emb_keys]
        if missing:
            raise ConfigError(f"{self.s['base']}: embeddings lack {missing}")
        merged = {k: self.task_arithmetic(k) for k in emb_keys if k in own}
        teachers = [{k: self.theta0[k] + self.tau[k][i] for k in emb_keys if k in own} for i in range(self.T)]
        z1, z2, calls = [], [], []
        for b in self.batches:
            c = capture(self.model, self.layers, merged, b["inputs"], all_layers=True)
            z1.append(c[0][0])
            calls.append(c)
            z2.append(capture(self.model, self.layers, teachers[b["task"]], b["inputs"], all_layers=False)[0][0])
        return z1, z2, calls

    def run(self, formulation="lambda", time_layer=None, fast_inputs=False):
        s, T = self.s, self.T
        t_start = time.perf_counter()
        merged = {}
        for k in self.groups["embeddings"] + self.groups["final"]:
            merged[k] = self.task_arithmetic(k)
        t0 = time.perf_counter()
        z1, z2, calls = self.embeddings()
        report_layers = [{"layer": "embeddings", "seconds": time.perf_counter() - t0}]
        blocks = []
        for l in range(self.L):
            t0 = time.perf_counter()
            layer = self.layers[l]
            params = self.block_params(l)
            th0 = {r: self.theta0[k] for r, k in params}
            tau = {r: self.tau[k] for r, k in params}
            with torch.no_grad():
                y = []
                for bi, b in enumerate(self.batches):
                    w = {r: th0[r] + tau[r][b["task"]] for r in th0}
                    y.append(call_block(layer, w, z2[bi], calls[bi][l]))
            cl = [c[l] for c in calls]
            if time_layer is not None and l < time_layer and fast_inputs:
                w_star, stats = {r: th0[r] + s["init"] * tau[r].sum(0) for r in th0}, {}
            elif time_layer is not None and l == time_layer:
                return self.train_block(l, layer, th0, tau, z1, y, cl, "lambda", timing=True)
            else:
                w_star, stats = self.train_block(l, layer, th0, tau, z1, y, cl, formulation)
            with torch.no_grad():
                z1 = [call_block(layer, w_star, z1[bi], cl[bi]) for bi in range(len(self.batches))]
            z2 = y
            for r, k in params:
                merged[k] = w_star[r].detach()
            for k in self.groups["blocks"][l]:
                if k not in merged:
                    merged[k] = self.theta0[k]
            stats["seconds"] = time.perf_counter() - t0
            blocks.append(dict(block=l, **stats))
            self.log(f"block {l}: loss {stats.get('loss_before', float('nan')):.6g} -> "
                     f"{stats.get('loss_after', float('nan')):.6g} ({stats['seconds']:.2f} s)")
        report_layers += [dict(layer=b["block"], **{k: v for k, v in b.items() if k != "block"}) for b in blocks]
        out = {self.base_names[k]: v for k, v in merged.items()}
        report = {
            "method": "prodistill",
            "reference": "tools/prodistill_reference.py",
            "formulation": formulation,
            "dtype": str(self.dtype).replace("torch.", ""),
            "settings": {k: s[k] for k in ("seed", "epochs", "lr", "batch_size", "init", "max_length",
                                           "loss", "include_padding")},
            "tasks": [{"model": os.path.relpath(m, os.path.dirname(s["config"])),
                       "calibration": os.path.relpath(c, os.path.dirname(s["config"])),
                       "examples": n, "heads": h}
                      for m, c, n, h in zip(s["models"], s["calibration"], self.n_examples, self.heads)],
            "batches": [{"task": b["task"], "first": b["first"], "count": b["count"],
                         "length": int(b["mask"].shape[1])} for b in self.batches],
            "layers": report_layers,
            "total_seconds": time.perf_counter() - t_start,
            "versions": versions(),
        }
        return out, report

    def full_loss(self, layer, w, z1, y, calls):
        with torch.no_grad():
            return float(sum(self.batch_loss(call_block(layer, w, z1[bi], calls[bi]), b, y[bi])
                             for bi, b in enumerate(self.batches)))

    def train_block(self, l, layer, th0, tau, z1, y, calls, formulation, timing=False):
        s = self.s
        n = len(self.batches)
        names = sorted(th0)
        w_init = {r: th0[r] + s["init"] * tau[r].sum(0) for r in names}
        loss_before = None if timing else self.full_loss(layer, w_init, z1, y, calls)
        orders = [epoch_order(n, s["seed"], l, e) for e in range(s["epochs"])]
        steps = 0
        if formulation == "lambda":
            lam = {r: torch.full(tau[r].shape, s["init"], dtype=self.dtype, requires_grad=True) for r in names}
            opt = torch.optim.Adam([lam[r] for r in names], lr=s["lr"], betas=BETAS, eps=EPS)

            def weights():
                return {r: th0[r] + (lam[r] * tau[r]).sum(0) for r in names}
            t_train = time.perf_counter()
            for order in orders:
                for bi in order:
                    opt.zero_grad()
                    b = self.batches[bi]
                    loss = self.batch_loss(call_block(layer, weights(), z1[bi], calls[bi]), b, y[bi])
                    loss.backward()
                    opt.step()
                    steps += 1
            seconds = time.perf_counter() - t_train
            with torch.no_grad():
                w_star = weights()
            lambda_mean = [float(sum(lam[r][i].detach().double().sum() for r in names) /
                                 sum(lam[r][i].numel() for r in names)) for i in range(self.T)]
        elif formulation == "collapse":
            # DESIGN.md section 5: state = W, M, V (moments of G = dL/dW); λ never materialised.
            W = {r: w_init[r].clone() for r in names}
            M = {r: torch.zeros_like(W[r]) for r in names}
            V = {r: torch.zeros_like(W[r]) for r in names}
            tau2 = {r: tau[r] ** 2 for r in names}
            tau_abs = {r: tau[r].abs() for r in names}
            t_train = time.perf_counter()
            for order in orders:
                for bi in order:
                    b = self.batches[bi]
                    Wg = {r: W[r].detach().requires_grad_(True) for r in names}
                    loss = self.batch_loss(call_block(layer, Wg, z1[bi], calls[bi]), b, y[bi])
                    grads = torch.autograd.grad(loss, [Wg[r] for r in names])
                    steps += 1
                    bc1 = 1 - BETAS[0] ** steps
                    bc2 = 1 - BETAS[1] ** steps
                    with torch.no_grad():
                        for r, G in zip(names, grads):
                            M[r].mul_(BETAS[0]).add_(G, alpha=1 - BETAS[0])
                            V[r].mul_(BETAS[1]).addcmul_(G, G, value=1 - BETAS[1])
                            m_hat = M[r] / bc1
                            sqrt_v_hat = (V[r] / bc2).sqrt()
                            ratio = (tau2[r] / (tau_abs[r] * sqrt_v_hat + EPS)).sum(0)
                            W[r] = W[r] - s["lr"] * m_hat * ratio
            seconds = time.perf_counter() - t_train
            w_star = W
            lambda_mean = None
        else:
            raise ValueError(formulation)
        if timing:
            return {"layer": l, "seconds": seconds, "steps": steps,
                    "ms_per_step": 1000.0 * seconds / max(steps, 1), "epochs": s["epochs"],
                    "batches_per_epoch": n, "tasks": self.T, "examples": sum(self.n_examples),
                    "threads": torch.get_num_threads(), "impl": "pytorch-reference"}
        stats = {"loss_before": loss_before, "loss_after": self.full_loss(layer, w_star, z1, y, calls),
                 "steps": steps, "train_seconds": seconds, "batch_order": orders}
        if lambda_mean is not None:
            stats["lambda_mean"] = lambda_mean
        return w_star, stats


def versions():
    import transformers
    return {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__}


# ---------------------------------------------------------------- output

def write_safetensors(path, tensors):
    """Deterministic safetensors: float tensors as F32 (integer ones as they are), keys sorted."""
    codes = {torch.float32: "F32", torch.int64: "I64", torch.int32: "I32", torch.int16: "I16",
             torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach()
        if t.is_floating_point():
            t = t.to(torch.float32)
        t = t.contiguous().cpu()
        data = t.numpy().tobytes()
        header[name] = {"dtype": codes[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps({"__metadata__": {"format": "pt"}, **header}, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for d in blobs:
            f.write(d)
    os.replace(tmp, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config")
    ap.add_argument("--out")
    ap.add_argument("--report")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--time-layer", type=int)
    ap.add_argument("--fast-inputs", action="store_true",
                    help="with --time-layer: earlier blocks are plain task arithmetic, not trained")
    ap.add_argument("--epochs", type=int, help="override distill.epochs")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    try:
        settings = load_settings(a.config, epochs=a.epochs)
        pd = ProDistill(settings)
        if a.time_layer is not None:
            if not 0 <= a.time_layer < pd.L:
                raise ConfigError(f"--time-layer must be in 0..{pd.L - 1}")
            print(json.dumps(pd.run(time_layer=a.time_layer, fast_inputs=a.fast_inputs)), flush=True)
            return 0
        if not a.out or not a.report:
            ap.error("--out and --report are required (unless --time-layer)")
        out, report = pd.run()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_safetensors(a.out, out)
    with open(a.report, "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
