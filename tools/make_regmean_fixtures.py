#!/usr/bin/env python3
"""make_regmean_fixtures: RegMean parity fixtures under Fixtures/distill/{bert,llama}/.

Reuses the ProDistill fixture families (base/, ft-a/, ft-b/, ft-c/, calib/ written by
tools/make_distill_fixtures.py) and writes, per family,
  config-regmean.yaml          the models/calibration of config.yaml, merge_method: regmean,
                               dtype: float32, distill: {batch_size: 4, max_length: 8, alpha: 0.9}
  config-regmean-one.yaml      the same with ft-a only
  expected-regmean.safetensors, expected-regmean.json          tools/regmean_reference.py on config-regmean.yaml
  expected-regmean-one.safetensors, expected-regmean-one.json  the same on config-regmean-one.yaml
(batches: a → 4,4,4; b → 4,4,1; c → 4,4,2; every calibration token is real, right padding only.)

Checks it prints (and fails on, exit 1, beyond loose bounds):
  * one model: expected-regmean-one vs ft-a's shared tensors (RegMean of one model is that model):
    max |diff| over the solved linears and over the mean tensors (the latter must be exactly 0).
  * Gram: for two linears per family (the deepest FFN-output and attention-output projections), the
    hook-accumulated Gᵢ against numpy X.T @ X / N of the captured real-token rows, per task.
  * solve: W* of the reference (float64 Cholesky, and the float32 stored in the file) against
    numpy.linalg.solve(Σ G̃ᵢ, Σ G̃ᵢ Wᵢᵀ) built from the numpy Grams.
  * hooks: for task a, every linear's captured input against an independent hand-written float64
    forward of the fine-tune (no transformers: embeddings, attention with RoPE/GQA for Llama, norms,
    activations), example by example without padding. This also shows which tensor each hook sees.
  * padding: Grams with batch_size 1 (no padding at all) against batch_size 4.
  * tolerance guide: W* from the Grams of that float64 forward (all tasks) vs the reference's W*
    (float32 forward), and the smallest/largest max |W*_regmean − mean of the fine-tunes| per linear
    (what a parity test has to resolve).

usage: tools/.venv-torch/bin/python tools/make_regmean_fixtures.py [--threads 1] [--skip-checks]
"""
import argparse
import json
import math
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", "Fixtures", "distill"))
sys.path.insert(0, HERE)
import prodistill_reference as pdr  # noqa: E402
import regmean_reference as rm  # noqa: E402

FAMILIES = ("bert", "llama")
CHECK_LINEARS = {"bert": ["encoder.layer.1.output.dense.weight", "encoder.layer.1.attention.output.dense.weight"],
                 "llama": ["layers.1.mlp.down_proj.weight", "layers.1.self_attn.o_proj.weight"]}


def config_text(models):
    lines = ["merge_method: regmean", "base_model: ./base", "models:"]
    for m, c in models:
        lines += [f"  - model: {m}", f"    calibration: {c}"]
    lines += ["dtype: float32", "distill: {batch_size: 4, max_length: 8, alpha: 0.9}", ""]
    return "\n".join(lines)


def load_st(path):
    return pdr.load_checkpoint(path)


def maxdiff(a, b):
    return float((a.to(torch.float64) - b.to(torch.float64)).abs().max())


# ---------------------------------------------------------------- independent float64 forward

def ln(x, w, b, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def rms(x, w, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def softmax(s):
    s = s - s.max(-1, keepdim=True).values
    e = torch.exp(s)
    return e / e.sum(-1, keepdim=True)


def manual_inputs(family, cfg, th, ids, types):
    """{stripped linear weight name: its input [S, in]} for one unpadded example, float64."""
    W = {k: v.to(torch.float64) for k, v in th.items() if v.is_floating_point()}
    ids = torch.tensor(ids)
    S = len(ids)
    out = {}
    if family == "bert":
        eps = cfg["layer_norm_eps"]
        nh = cfg["num_attention_heads"]
        hd = cfg["hidden_size"] // nh
        h = W["embeddings.word_embeddings.weight"][ids] + W["embeddings.position_embeddings.weight"][:S] \
            + W["embeddings.token_type_embeddings.weight"][torch.tensor(types)]
        h = ln(h, W["embeddings.LayerNorm.weight"], W["embeddings.LayerNorm.bias"], eps)
        for l in range(cfg["num_hidden_layers"]):
            p = f"encoder.layer.{l}."

            def lin(name, x):
                out[p + name + ".weight"] = x
                return x @ W[p + name + ".weight"].T + W[p + name + ".bias"]
            q = lin("attention.self.query", h).view(S, nh, hd).transpose(0, 1)
            k = lin("attention.self.key", h).view(S, nh, hd).transpose(0, 1)
            v = lin("attention.self.value", h).view(S, nh, hd).transpose(0, 1)
            ctx = (softmax(q @ k.transpose(1, 2) / math.sqrt(hd)) @ v).transpose(0, 1).reshape(S, nh * hd)
            a = ln(lin("attention.output.dense", ctx) + h, W[p + "attention.output.LayerNorm.weight"],
                   W[p + "attention.output.LayerNorm.bias"], eps)
            i = lin("intermediate.dense", a)
            i = 0.5 * i * (1.0 + torch.special.erf(i / math.sqrt(2.0)))
            h = ln(lin("output.dense", i) + a, W[p + "output.LayerNorm.weight"], W[p + "output.LayerNorm.bias"], eps)
    else:
        eps = cfg["rms_norm_eps"]
        nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        hd = cfg.get("head_dim") or cfg["hidden_size"] // nh
        assert cfg.get("rope_scaling") is None
        inv = 1.0 / (cfg.get("rope_theta", 10000.0) ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
        f = torch.arange(S, dtype=torch.float64)[:, None] * inv[None, :]
        emb = torch.cat([f, f], -1)
        cos, sin = emb.cos(), emb.sin()

        def rope(x):  # [n, S, hd]
            x1, x2 = x[..., :hd // 2], x[..., hd // 2:]
            return x * cos + torch.cat([-x2, x1], -1) * sin
        causal = torch.triu(torch.full((S, S), float("-inf"), dtype=torch.float64), 1)
        h = W["embed_tokens.weight"][ids]
        for l in range(cfg["num_hidden_layers"]):
            p = f"layers.{l}."

            def lin(name, x):
                out[p + name + ".weight"] = x
                return x @ W[p + name + ".weight"].T
            x = rms(h, W[p + "input_layernorm.weight"], eps)
            q = rope(lin("self_attn.q_proj", x).view(S, nh, hd).transpose(0, 1))
            k = rope(lin("self_attn.k_proj", x).view(S, nkv, hd).transpose(0, 1))
            v = lin("self_attn.v_proj", x).view(S, nkv, hd).transpose(0, 1)
            rep = nh // nkv
            k, v = k.repeat_interleave(rep, 0), v.repeat_interleave(rep, 0)
            ctx = (softmax(q @ k.transpose(1, 2) / math.sqrt(hd) + causal) @ v).transpose(0, 1).reshape(S, nh * hd)
            h = h + lin("self_attn.o_proj", ctx)
            x = rms(h, W[p + "post_attention_layernorm.weight"], eps)
            g = lin("mlp.gate_proj", x)
            u = lin("mlp.up_proj", x)
            h = h + lin("mlp.down_proj", g * torch.sigmoid(g) * u)
    return out


# ---------------------------------------------------------------- checks

def checks(fam, d, threads):
    ok = True
    print(f"[{fam}] checks")
    # one model
    one = load_st(os.path.join(d, "expected-regmean-one.safetensors"))
    s1 = rm.load_settings(os.path.join(d, "config-regmean-one.yaml"))
    r1 = rm.RegMean(s1, log=lambda *a: None)
    ft_a = r1.thetas[0]
    lin_d = max(maxdiff(one[r1.base_names[k]], ft_a[k]) for k in r1.linears)
    lin_rel = max(maxdiff(one[r1.base_names[k]], ft_a[k]) / float(ft_a[k].abs().max()) for k in r1.linears)
    other_d = max(maxdiff(one[r1.base_names[k]], ft_a[k]) for k in r1.theta0 if k not in r1.linears)
    if set(one) != set(r1.base_names.values()):
        print("  names of expected-regmean-one differ from the base's"); ok = False
    print(f"  one model = ft-a: max |diff| linears {lin_d:.3e} (relative to max |W| {lin_rel:.3e}), "
          f"mean tensors {other_d:.3e}")
    ok &= lin_d < 1e-4 and other_d == 0.0

    # Gram and solve on the full config
    s = rm.load_settings(os.path.join(d, "config-regmean.yaml"))
    r = rm.RegMean(s, log=lambda *a: None)
    keep = CHECK_LINEARS[fam]
    out, _, dbg = r.run(keep=keep)
    stored = load_st(os.path.join(d, "expected-regmean.safetensors"))
    rerun = max(maxdiff(stored[n], t) for n, t in out.items())
    print(f"  re-run in process vs stored expected-regmean: max |diff| {rerun:.3e}")
    ok &= rerun == 0.0
    alpha = s["alpha"]
    for k in keep:
        D = dbg[k]
        gdiffs, Gnp = [], []
        for i, rows in enumerate(D["rows"]):
            X = np.concatenate([x.numpy() for x in rows], 0).astype(np.float64)
            G = X.T @ X / X.shape[0]
            Gnp.append(G)
            gdiffs.append(float(np.abs(G - D["grams"][i].numpy()).max() / np.abs(G).max()))
        A = sum(alpha * G + (1 - alpha) * np.diag(np.diag(G)) for G in Gnp)
        B = sum((alpha * G + (1 - alpha) * np.diag(np.diag(G))) @ th[k].numpy().astype(np.float64).T
                for G, th in zip(Gnp, r.thetas))
        Wnp = np.linalg.solve(A, B).T
        d64 = float(np.abs(Wnp - D["W64"].numpy()).max())
        d32 = float(np.abs(Wnp - stored[r.base_names[k]].numpy().astype(np.float64)).max())
        print(f"  {r.base_names[k]}: Gram vs numpy max rel diff per task {['%.1e' % g for g in gdiffs]}; "
              f"cond {np.linalg.cond(A):.3g}; W* vs numpy.linalg.solve: float64 {d64:.3e}, stored float32 {d32:.3e} "
              f"(max |W*| {np.abs(Wnp).max():.3g})")
        ok &= max(gdiffs) < 1e-12 and d64 < 1e-10 and d32 < 1e-6

    # what every hook captures: independent float64 forward of ft-a, example by example
    cfg = json.load(open(os.path.join(r.base_dir, "config.json")))
    _, n, kept, _ = r.grams(0, keep=r.linears)
    ex = r.calib[0]
    assert all(all(m == 1 for m in mask) for _, mask, _ in ex), "fixture examples are expected to be all-real"
    manual = {k: [] for k in r.linears}
    for ids, _, types in ex:
        for k, x in manual_inputs(fam, cfg, r.thetas[0], ids, types).items():
            manual[k].append(x)
    print(f"  hooks vs hand-written float64 forward of ft-a ({len(ex)} examples, {n} tokens), max |diff|:")
    worst = 0.0
    for k in r.linears:
        cap = torch.cat(kept[k], 0)
        ref = torch.cat(manual[k], 0)
        dd = maxdiff(cap, ref)
        worst = max(worst, dd / float(ref.abs().max()))
        print(f"    {k:45s} in={cap.shape[1]:3d} {dd:.2e} (max |x| {float(ref.abs().max()):.3g})")
    ok &= worst < 1e-4

    # padding invariance
    g4, n4, _, _ = r.grams(0)
    g1, n1, _, _ = r.grams(0, batch_size=1)
    pad = max(maxdiff(g4[k], g1[k]) / float(g1[k].abs().max()) for k in r.linears)
    print(f"  Gram batch_size 4 vs 1 (task a, {n4} = {n1} tokens): max rel diff {pad:.2e}")
    ok &= n4 == n1 and pad < 1e-5

    # tolerance guide: W* from Grams of the hand-written float64 forward (all tasks) vs the reference's
    # float32 forward; and how far RegMean moves from the plain mean (what a parity test must resolve)
    g_man = []
    for i in range(r.T):
        acc, n_i = {}, 0
        for ids, _, types in r.calib[i]:
            for k, x in manual_inputs(fam, cfg, r.thetas[i], ids, types).items():
                acc[k] = acc.get(k, 0) + x.T @ x
            n_i += len(ids)
        g_man.append({k: v / n_i for k, v in acc.items()})
    g_ref = [r.grams(i)[0] for i in range(r.T)]
    sens = max(maxdiff(r.solve(k, [g[k] for g in g_ref])[0], r.solve(k, [g[k] for g in g_man])[0])
               for k in r.linears)
    move = min(maxdiff(stored[r.base_names[k]], sum(th[k].to(torch.float64) for th in r.thetas) / r.T)
               for k in r.linears)
    move_max = max(maxdiff(stored[r.base_names[k]], sum(th[k].to(torch.float64) for th in r.thetas) / r.T)
                   for k in r.linears)
    spread = max(maxdiff(r.thetas[0][k], r.thetas[1][k]) for k in r.linears)
    print(f"  W* from float64-forward Grams vs the reference's float32 forward: max |diff| {sens:.2e}")
    print(f"  max |W*_regmean - mean of fine-tunes| per linear: min {move:.2e}, max {move_max:.2e} "
          f"(max |W_a - W_b| {spread:.2e})")
    ok &= sens < 1e-6
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-checks", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    ok = True
    for fam in FAMILIES:
        d = os.path.join(ROOT, fam)
        models = [(f"./ft-{t}", f"./calib/{t}.jsonl") for t in "abc"]
        for suffix, ms in (("", models), ("-one", models[:1])):
            cfg = os.path.join(d, f"config-regmean{suffix}.yaml")
            with open(cfg, "w") as f:
                f.write(config_text(ms))
            out = os.path.join(d, f"expected-regmean{suffix}.safetensors")
            rc = rm.main([cfg, "--out", out, "--report", out[:-len(".safetensors")] + ".json",
                          "--threads", str(a.threads)])
            if rc != 0:
                sys.exit(rc)
            print(f"wrote {os.path.relpath(cfg)} -> {os.path.relpath(out)} ({os.path.getsize(out)} bytes)")
        if not a.skip_checks:
            ok &= checks(fam, d, a.threads)
    if not ok:
        print("CHECKS FAILED", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
