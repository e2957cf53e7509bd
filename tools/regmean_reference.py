#!/usr/bin/env python3
"""regmean_reference: an independent PyTorch reference of StreamMerge's RegMean.

Written from DESIGN.md sections 3 and 7 (the `regmean` bullet), not from the Swift code. It produces
the expected outputs Fixtures/distill/{bert,llama}/expected-regmean*.safetensors
(tools/make_regmean_fixtures.py). The text below is the contract the Swift implementation follows.

usage: regmean_reference.py CONFIG.yaml --out OUT.safetensors [--report OUT.json] [--threads 2]

Inputs
  A StreamMerge config: merge_method: regmean; base_model; models: [{model, calibration}];
  dtype: float32 (the only output dtype here; may be omitted); distill: {batch_size, max_length,
  alpha} with defaults 16, 128, 0.9. Relative paths resolve against the config file's directory.
  Unknown keys are errors. Model directories, prefix stripping (`bert.`/`roberta.` for the BERT
  family, `model.` for the Llama family), head detection (tensors only in a fine-tune, e.g.
  `classifier.*`, are ignored), calibration reading and batching are those of
  tools/prodistill_reference.py (imported helpers): JSONL lines {"input_ids", "attention_mask"?,
  "token_type_ids"?} (mask default all 1, types default all 0), file order, each truncated to
  max_length; consecutive chunks of batch_size examples (the last may be smaller), each right-padded
  to its longest example with pad id = the base config's pad_token_id (0 when null), mask 0, type 0.

Linear layers (stripped names; every block l)
  BERT family   encoder.layer.l.attention.self.{query,key,value}, encoder.layer.l.attention.output.dense,
                encoder.layer.l.intermediate.dense, encoder.layer.l.output.dense
  Llama family  layers.l.self_attn.{q,k,v,o}_proj, layers.l.mlp.{gate,up,down}_proj
  (the script checks that these are exactly the nn.Linear modules inside transformers' blocks). Only
  their `.weight` [out, in] is solved; their biases and every other tensor (embeddings, norms,
  pooler, final norm, lm_head) are the plain mean (1/T) Σ θᵢ, accumulated in float64 and rounded
  once to float32. Integer tensors are copied from the base.

Algorithm (T fine-tunes θ1..θT)
  1. For each fine-tune i: transformers' bare model (AutoModel of the BASE config.json: BertModel /
     LlamaModel / ..., float32, eval, eager attention) loaded with fine-tune i's own weights, run on
     task i's own calibration batches. A forward pre-hook on every linear above records its input X
     [B, S, in]; only rows of real tokens (attention_mask 1) are kept, cast to float64, and
     Gᵢ += XᵀX over all batches; Nᵢ = number of real tokens of task i; Gᵢ ← Gᵢ / Nᵢ.
     (Right padding cannot change real tokens' activations: BERT masks padded keys, Llama is causal;
     so Gᵢ is independent of batch_size up to float rounding.)
  2. G̃ᵢ = α·Gᵢ + (1−α)·diag(Gᵢ)   (off-diagonal scaled by α, diagonal unchanged).
  3. A = Σᵢ G̃ᵢ [in, in]; B = Σᵢ G̃ᵢ Wᵢᵀ [in, out] (Wᵢ in float64); W*ᵀ = A⁻¹B by Cholesky
     (torch.linalg.cholesky + cholesky_solve, float64); W* = (W*ᵀ)ᵀ rounded to float32. A that is not
     positive definite is an error naming the layer.

Outputs
  --out: safetensors with every base tensor under the BASE's tensor names, float32 (integer tensors
  unchanged), keys sorted (deterministic bytes; prodistill_reference.write_safetensors).
  --report: JSON {method, settings, tasks: [{model, calibration, examples, batches, tokens, heads}],
  linears: [{name, shape, tokens: [N1..NT], cond, eig_min, eig_max}], versions}; cond is the 2-norm
  condition number of A = Σ G̃ᵢ (float64).
"""
import argparse
import json
import os
import re
import sys

import torch
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import prodistill_reference as pdr  # noqa: E402  (config/checkpoint/calibration helpers only)

ConfigError = pdr.ConfigError

LINEAR_PATTERNS = {
    "bert": re.compile(r"^encoder\.layer\.(\d+)\.(attention\.self\.(query|key|value)|attention\.output\.dense"
                       r"|intermediate\.dense|output\.dense)\.weight$"),
    "llama": re.compile(r"^layers\.(\d+)\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)\.weight$"),
}
PATTERN_OF = {"bert": "bert", "roberta": "bert", "llama": "llama", "mistral": "llama", "qwen2": "llama"}
TOP_KEYS = {"merge_method", "base_model", "models", "dtype", "out_dtype", "out_shard_size", "seed",
            "tokenizer_source", "distill", "name"}
MODEL_KEYS = {"model", "calibration", "head"}
DISTILL_KEYS = {"batch_size", "max_length", "alpha", "activation_dtype"}


def load_settings(path):
    cfg = yaml.safe_load(open(path))
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: the config must be a mapping")
    for k in cfg:
        if k not in TOP_KEYS:
            raise ConfigError(f"{path}: unknown key '{k}'" + (" (regmean takes no parameters)" if k == "parameters" else ""))
    if cfg.get("merge_method") != "regmean":
        raise ConfigError(f"{path}: merge_method must be regmean, not {cfg.get('merge_method')!r}")
    for k in ("dtype", "out_dtype"):
        if cfg.get(k, "float32") != "float32":
            raise ConfigError(f"{path}: this reference writes float32 only ({k}: {cfg[k]})")
    root = os.path.dirname(os.path.abspath(path))

    def resolve(p):
        return p if os.path.isabs(p) else os.path.normpath(os.path.join(root, p))
    models = cfg.get("models") or []
    if not models or "base_model" not in cfg:
        raise ConfigError(f"{path}: needs base_model and a non-empty models list")
    for m in models:
        for k in m:
            if k not in MODEL_KEYS:
                raise ConfigError(f"{path}: unknown key '{k}' in model {m.get('model')}")
        if "calibration" not in m:
            raise ConfigError(f"{path}: model {m.get('model')} has no calibration file")
    d = cfg.get("distill") or {}
    for k in d:
        if k not in DISTILL_KEYS:
            raise ConfigError(f"{path}: unknown key '{k}' in distill (regmean uses batch_size, max_length, alpha)")
    if d.get("activation_dtype", "float32") != "float32":
        raise ConfigError(f"{path}: this reference keeps activations in float32 only")
    s = {
        "config": os.path.abspath(path),
        "base": resolve(cfg["base_model"]),
        "models": [resolve(m["model"]) for m in models],
        "calibration": [resolve(m["calibration"]) for m in models],
        "batch_size": int(d.get("batch_size", 16)),
        "max_length": int(d.get("max_length", 128)),
        "alpha": float(d.get("alpha", 0.9)),
    }
    if s["batch_size"] < 1 or s["max_length"] < 1:
        raise ConfigError(f"{path}: distill.batch_size and distill.max_length must be >= 1")
    if not 0.0 <= s["alpha"] <= 1.0:
        raise ConfigError(f"{path}: distill.alpha must be in [0, 1]")
    return s


class RegMean:
    def __init__(self, settings, log=None):
        import transformers
        self.s = s = settings
        self.log = log or (lambda *a: print(*a, file=sys.stderr))
        self.base_dir = pdr.checkpoint_files(s["base"])[0]
        self.config = transformers.AutoConfig.from_pretrained(self.base_dir)
        mt = self.config.model_type
        if mt not in PATTERN_OF:
            raise ConfigError(f"{s['base']}: model_type {mt!r} is not supported (supported: {sorted(PATTERN_OF)})")
        self.prefixes, self.emb_prefix, self.block_prefix = pdr.FAMILIES[mt]
        self.pattern = LINEAR_PATTERNS[PATTERN_OF[mt]]
        self.bert_family = PATTERN_OF[mt] == "bert"
        self.T = len(s["models"])

        base = pdr.load_checkpoint(s["base"])
        self.base_names, self.theta0 = {}, {}
        for name, t in base.items():
            k = pdr.strip_name(name, self.prefixes)
            if k in self.base_names:
                raise ConfigError(f"{s['base']}: {name} and {self.base_names[k]} collide after prefix stripping")
            self.base_names[k] = name
            self.theta0[k] = t
        self.thetas, self.heads = [], []  # per fine-tune: {stripped: tensor} of the shared tensors
        for path in s["models"]:
            ft = {pdr.strip_name(n, self.prefixes): (n, t) for n, t in pdr.load_checkpoint(path).items()}
            own = {}
            for k in self.theta0:
                if k not in ft:
                    raise ConfigError(f"{path}: missing tensor {self.base_names[k]}")
                if tuple(ft[k][1].shape) != tuple(self.theta0[k].shape):
                    raise ConfigError(f"{path}: tensor {ft[k][0]} has shape {tuple(ft[k][1].shape)}, "
                                      f"the base {tuple(self.theta0[k].shape)}")
                own[k] = ft[k][1]
            self.thetas.append(own)
            self.heads.append(sorted(n for k, (n, _) in ft.items() if k not in self.theta0))
        self.linears = sorted((k for k in self.theta0 if self.pattern.match(k)), key=self._order)
        if not self.linears:
            raise ConfigError(f"{s['base']}: no linear layers found")

        pad = self.config.pad_token_id
        self.pad_id = 0 if pad is None else int(pad)
        self.calib = [pdr.read_calibration(p, s["max_length"]) for p in s["calibration"]]
        vocab = self.config.vocab_size
        types = getattr(self.config, "type_vocab_size", 1) if self.bert_family else None
        for path, examples in zip(s["calibration"], self.calib):
            for n, (ids, _, tt) in enumerate(examples, 1):
                if min(ids) < 0 or max(ids) >= vocab:
                    raise ConfigError(f"{path}: example {n} has a token id outside 0..{vocab - 1}")
                if types is not None and (min(tt) < 0 or max(tt) >= types):
                    raise ConfigError(f"{path}: example {n} has a token type outside 0..{types - 1}")

    def _order(self, k):
        m = self.pattern.match(k)
        return (int(m.group(1)), k)

    # -- step 1: Gram matrices of one fine-tune
    def build_model(self, i):
        import transformers
        config = transformers.AutoConfig.from_pretrained(self.base_dir)
        config._attn_implementation = "eager"
        model = transformers.AutoModel.from_config(config, attn_implementation="eager")
        model.config._attn_implementation = "eager"
        model = model.to(torch.float32).eval()
        sd = model.state_dict()
        weights = {k: v.to(torch.float32) if v.is_floating_point() else v
                   for k, v in self.thetas[i].items() if k in sd}
        missing, _ = model.load_state_dict(weights, strict=False)
        bad = [k for k in missing if k.startswith(self.emb_prefix) or k.startswith(self.block_prefix)]
        if bad:
            raise ConfigError(f"{self.s['models'][i]}: the model lacks {bad}")
        # The linears listed by name must be exactly the nn.Linear modules inside the blocks.
        found = sorted((n + ".weight" for n, m in model.named_modules()
                        if isinstance(m, torch.nn.Linear) and n.startswith(self.block_prefix)), key=self._order)
        if found != self.linears:
            raise ConfigError(f"linear layers by name {self.linears} differ from transformers' nn.Linear "
                              f"modules {found}")
        return model

    def batches(self, i, batch_size=None):
        return pdr.make_batches([self.calib[i]], batch_size or self.s["batch_size"], self.pad_id, self.bert_family)

    def grams(self, i, keep=(), batch_size=None):
        """({linear: Gᵢ float64 [in,in], already divided by Nᵢ}, Nᵢ, {linear in keep: [real-token rows]})."""
        model = self.build_model(i)
        acc = {k: None for k in self.linears}
        counts = {k: 0 for k in self.linears}
        kept = {k: [] for k in keep}
        state = {}
        handles = []
        for k in self.linears:
            mod = model.get_submodule(k[:-len(".weight")])

            def pre(m, args, kwargs, k=k):
                x = args[0] if args else kwargs["input"]
                real = state["mask"].bool()
                if x.shape[:2] != real.shape:
                    raise RuntimeError(f"{k}: input of shape {tuple(x.shape)} for a batch {tuple(real.shape)}")
                rows = x.detach()[real].to(torch.float64)
                g = rows.T @ rows
                acc[k] = g if acc[k] is None else acc[k] + g
                counts[k] += rows.shape[0]
                if k in kept:
                    kept[k].append(rows.clone())
            handles.append(mod.register_forward_pre_hook(pre, with_kwargs=True))
        batches = self.batches(i, batch_size)
        try:
            with torch.no_grad():
                for b in batches:
                    state["mask"] = b["mask"]
                    model(**b["inputs"])
        finally:
            for h in handles:
                h.remove()
        n = int(sum(int(b["mask"].sum()) for b in batches))
        if n == 0:
            raise ConfigError(f"{self.s['calibration'][i]}: no real tokens")
        for k in self.linears:
            if counts[k] != n:
                raise RuntimeError(f"{k}: saw {counts[k]} rows, expected {n}")
        return {k: acc[k] / n for k in self.linears}, n, kept, len(batches)

    # -- steps 2, 3
    @staticmethod
    def regularize(G, alpha):
        return alpha * G + (1.0 - alpha) * torch.diag(torch.diagonal(G))

    def solve(self, k, Gs):
        alpha = self.s["alpha"]
        A = torch.zeros_like(Gs[0])
        B = None
        for G, th in zip(Gs, self.thetas):
            Gt = self.regularize(G, alpha)
            A += Gt
            t = Gt @ th[k].to(torch.float64).T
            B = t if B is None else B + t
        L, info = torch.linalg.cholesky_ex(A)
        if int(info) != 0:
            raise ConfigError(f"{self.base_names[k]}: Σ G̃ is not positive definite (Cholesky failed at "
                              f"column {int(info)}); an input feature may be zero on every calibration token")
        X = torch.cholesky_solve(B, L)  # [in, out]
        eig = torch.linalg.eigvalsh(A)
        return X.T.contiguous(), A, B, {"cond": float(torch.linalg.cond(A)),
                                        "eig_min": float(eig[0]), "eig_max": float(eig[-1])}

    def run(self, keep=()):
        s, T = self.s, self.T
        grams, tokens, kept, nbatches = [], [], [], []
        for i in range(T):
            G, n, kp, nb = self.grams(i, keep)
            grams.append(G)
            tokens.append(n)
            kept.append(kp)
            nbatches.append(nb)
            self.log(f"task {i}: {len(self.calib[i])} examples, {nb} batches, {n} real tokens")
        merged, lin_report, debug = {}, [], {}
        for k in self.linears:
            W64, A, B, stats = self.solve(k, [g[k] for g in grams])
            merged[k] = W64.to(torch.float32)
            lin_report.append({"name": self.base_names[k], "shape": list(self.theta0[k].shape),
                               "tokens": tokens, **stats})
            if k in keep:
                debug[k] = {"W64": W64, "A": A, "B": B, "grams": [g[k] for g in grams],
                            "rows": [kp[k] for kp in kept]}
        for k, t0 in self.theta0.items():
            if k in merged:
                continue
            if not t0.is_floating_point():
                merged[k] = t0
                continue
            acc = torch.zeros(t0.shape, dtype=torch.float64)
            for th in self.thetas:
                acc += th[k].to(torch.float64)
            merged[k] = (acc / T).to(torch.float32)
        out = {self.base_names[k]: v for k, v in merged.items()}
        cdir = os.path.dirname(s["config"])
        report = {
            "method": "regmean",
            "reference": "tools/regmean_reference.py",
            "dtype": "float32",
            "settings": {k: s[k] for k in ("batch_size", "max_length", "alpha")},
            "pad_id": self.pad_id,
            "tasks": [{"model": os.path.relpath(m, cdir), "calibration": os.path.relpath(c, cdir),
                       "examples": len(ex), "batches": nb, "tokens": n, "heads": h}
                      for m, c, ex, nb, n, h in zip(s["models"], s["calibration"], self.calib, nbatches,
                                                    tokens, self.heads)],
            "linears": lin_report,
            "mean_tensors": sorted(self.base_names[k] for k in self.theta0 if k not in set(self.linears)),
            "versions": pdr.versions(),
        }
        return out, report, debug


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config")
    ap.add_argument("--out", required=True)
    ap.add_argument("--report")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    try:
        out, report, _ = RegMean(load_settings(a.config)).run()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    pdr.write_safetensors(a.out, out)
    if a.report:
        with open(a.report, "w") as f:
            json.dump(report, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
