#!/usr/bin/env python3
"""make_distill_fixtures: ProDistill parity fixtures under Fixtures/distill/{bert,llama}/.

Each fixture directory holds
  base/                 config.json + model.safetensors of Fixtures/models/bert-tiny resp. llama-tiny,
                        float32. The BERT base drops bert-tiny's `classifier.*`, so it is a BertModel-like
                        base (names keep the `bert.` prefix) and the fine-tunes' classifiers are task heads.
  ft-a/, ft-b/, ft-c/   the base plus a seeded random task vector on every shared tensor,
                        τ = 0.01 · rms(θ0 tensor) · N(0, 1) (relative size ~1e-2); BERT fine-tunes also
                        carry their own random `classifier.weight` [3,32] / `classifier.bias` [3].
  calib/{a,b,c}.jsonl   12, 9, 10 examples, lengths 3..8, random ids in [3, vocab); BERT examples start
                        with id 2 ([CLS]-like). Fields vary on purpose: some lines give attention_mask,
                        some token_type_ids (BERT: a second segment of 1s), some only input_ids.
  config.yaml           prodistill, epochs 2, lr 0.01, batch_size 4, init 0.3, seed 7, max_length 8,
                        loss sum, include_padding false, dtype float32
  config-mean.yaml      the same with loss: mean, include_padding: true
  expected.safetensors, expected.json            tools/prodistill_reference.py on config.yaml
  expected-mean.safetensors, expected-mean.json  the same on config-mean.yaml
(batches: a → 4,4,4; b → 4,4,1; c → 4,4,2: 9 batches per epoch, 18 Adam steps per block.)

It then prints two checks of the reference itself:
  * T = 1 sanity: one fine-tune whose embeddings equal the base (so z1 = z2 at block 0), 128 random
    examples of 8 tokens, batch 16, lr 0.05, 400 epochs: the loss should go towards zero and λ towards 1
    (mean, median and the τ²-weighted mean Σλτ²/Στ² of the block's λ are printed; elements with no
    effect on the output, e.g. BERT's attention key bias, keep λ0).
  * Collapse cross-check: the whole algorithm in float64, explicit per-task λ with torch.optim.Adam vs
    DESIGN.md section 5's collapsed state (W, M, V of G = ∂L/∂W; ΔW = −lr·M̂ ⊙ Σ τ²/(|τ|·√V̂ + ε)),
    on the bert fixture (both configs, and config.yaml with 40 epochs = 360 steps per block): the max
    |W*_λ − W*_collapse| over all merged tensors.

Deterministic data (fixed seeds, own sorted safetensors writer); expected.json's seconds vary per run.
usage: tools/.venv-torch/bin/python tools/make_distill_fixtures.py [--threads 1] [--skip-checks]
"""
import argparse
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", "Fixtures"))
sys.path.insert(0, HERE)
import prodistill_reference as ref  # noqa: E402

TASKS = [("a", 12), ("b", 9), ("c", 10)]
FAMILY = {"bert": "bert-tiny", "llama": "llama-tiny"}
SEEDS = {"bert": 1100, "llama": 2200}


def read_model(src):
    tensors = ref.load_checkpoint(src)
    config = json.load(open(os.path.join(src, "config.json")))
    return config, tensors


def write_model(dirpath, config, tensors):
    os.makedirs(dirpath, exist_ok=True)
    with open(os.path.join(dirpath, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    ref.write_safetensors(os.path.join(dirpath, "model.safetensors"), tensors)


def task_vector(rng, t, scale=0.01):
    rms = float(np.sqrt(np.mean(t.numpy().astype(np.float64) ** 2))) or 1.0
    return torch.from_numpy((scale * rms * rng.standard_normal(tuple(t.shape))).astype(np.float32))


def write_calibration(path, rng, n, vocab, bert):
    lines = []
    for j in range(n):
        length = int(rng.integers(3, 9))
        ids = [int(x) for x in rng.integers(3, vocab, length)]
        if bert:
            ids[0] = 2
        ex = {"input_ids": ids}
        if j % 3 != 2:
            ex["attention_mask"] = [1] * length
        if bert and j % 2 == 1:
            cut = int(rng.integers(1, length))
            ex["token_type_ids"] = [0] * cut + [1] * (length - cut)
        lines.append(json.dumps(ex, separators=(", ", ": ")))
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def config_text(loss, include_padding, models=("a", "b", "c"), epochs=2, lr=0.01, init=0.3):
    rows = "".join(f"  - model: ./ft-{m}\n    calibration: ./calib/{m}.jsonl\n" for m in models)
    return (f"merge_method: prodistill\nbase_model: ./base\nmodels:\n{rows}seed: 7\ndtype: float32\n"
            f"distill: {{epochs: {epochs}, lr: {lr}, batch_size: 4, init: {init}, max_length: 8, "
            f"loss: {loss}, include_padding: {'true' if include_padding else 'false'}}}\n")


def build_fixture(fam):
    out = os.path.join(ROOT, "distill", fam)
    if os.path.isdir(out):
        shutil.rmtree(out)
    config, base = read_model(os.path.join(ROOT, "models", FAMILY[fam]))
    heads = {}
    if fam == "bert":
        heads = {k: v for k, v in base.items() if k.startswith("classifier.")}
        base = {k: v for k, v in base.items() if k not in heads}
    write_model(os.path.join(out, "base"), config, base)
    rng = np.random.default_rng(SEEDS[fam])
    for m, _ in TASKS:
        ft = {k: v + task_vector(rng, v) for k, v in sorted(base.items())}
        for k, v in sorted(heads.items()):
            ft[k] = torch.from_numpy((0.1 * rng.standard_normal(tuple(v.shape))).astype(np.float32))
        write_model(os.path.join(out, f"ft-{m}"), config, ft)
    os.makedirs(os.path.join(out, "calib"))
    for m, n in TASKS:
        write_calibration(os.path.join(out, "calib", f"{m}.jsonl"), rng, n, config["vocab_size"], fam == "bert")
    for name, loss, pad in (("config.yaml", "sum", False), ("config-mean.yaml", "mean", True)):
        with open(os.path.join(out, name), "w") as f:
            f.write(config_text(loss, pad))
    return out


def run_reference(cfg, out_st, out_json):
    pd = ref.ProDistill(ref.load_settings(cfg), log=lambda *a: None)
    merged, report = pd.run()
    ref.write_safetensors(out_st, merged)
    with open(out_json, "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    return report


def dir_size(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def t1_sanity(fam, n=128, length=8, epochs=400):
    """One fine-tune (ft-a) whose task vector is zero on the embeddings, so z1 = z2 entering block 0.
    Its own calibration set is large enough (n·length·hidden outputs > parameters of a block) for
    λ = 1 to be the only zero-loss point; batch 16, lr 0.05."""
    src = os.path.join(ROOT, "distill", fam)
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(os.path.join(src, "base"), os.path.join(tmp, "base"))
        os.makedirs(os.path.join(tmp, "calib"))
        config, base = read_model(os.path.join(src, "base"))
        ft = ref.load_checkpoint(os.path.join(src, "ft-a"))
        emb = "embeddings." if fam == "bert" else "embed_tokens."
        for k in list(ft):
            if emb in k:
                ft[k] = base[k].clone()
        write_model(os.path.join(tmp, "ft-a"), config, ft)
        rng = np.random.default_rng(5)
        with open(os.path.join(tmp, "calib", "a.jsonl"), "w") as f:
            for _ in range(n):
                f.write(json.dumps({"input_ids": [int(x) for x in rng.integers(3, config["vocab_size"], length)]}) + "\n")
        cfg = os.path.join(tmp, "config.yaml")
        with open(cfg, "w") as f:
            f.write(config_text("sum", False, models=("a",), epochs=epochs, lr=0.05, init=0.3)
                    .replace("batch_size: 4", "batch_size: 16").replace("max_length: 8", f"max_length: {length}"))
        pd = ref.ProDistill(ref.load_settings(cfg), log=lambda *a: None)
        merged, report = pd.run()
        print(f"T=1 sanity ({fam}: {n} examples x {length} tokens, batch 16, {epochs} epochs = "
              f"{report['layers'][1]['steps']} steps/block, lr 0.05, init 0.3):")
        for l, layer in enumerate(report["layers"][1:]):
            lam, num, den = [], 0.0, 0.0
            for k in pd.groups["blocks"][l]:
                tau = pd.tau[k][0].double()
                move = merged[pd.base_names[k]].double() - pd.theta0[k].double()
                lam.append((move / tau).flatten())
                num += float((move * tau).sum())
                den += float((tau * tau).sum())
            lam = torch.cat(lam)
            print(f"  block {l}: loss {layer['loss_before']:.4e} -> {layer['loss_after']:.4e} "
                  f"(x{layer['loss_after'] / layer['loss_before']:.1e}); λ: mean {layer['lambda_mean'][0]:.3f}, "
                  f"median {float(lam.median()):.3f}, τ²-weighted {num / den:.3f} (init 0.3)")
        return report


def collapse_check(fam, cfg_name, epochs=None):
    cfg = os.path.join(ROOT, "distill", fam, cfg_name)
    pd = ref.ProDistill(ref.load_settings(cfg, epochs=epochs), dtype=torch.float64, log=lambda *a: None)
    a, ra = pd.run(formulation="lambda")
    b, rb = pd.run(formulation="collapse")
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    moved = max(float((a[k] - pd.theta0[ref.strip_name(k, pd.prefixes)] -
                       pd.s["init"] * pd.tau[ref.strip_name(k, pd.prefixes)].sum(0)).abs().max())
                for k in a if pd.theta0[ref.strip_name(k, pd.prefixes)].is_floating_point())
    loss_diff = max(abs(x["loss_after"] - y["loss_after"]) for x, y in zip(ra["layers"][1:], rb["layers"][1:]))
    print(f"collapse cross-check ({fam}/{cfg_name}, {ra['layers'][1]['steps']} steps/block, float64): "
          f"max |W*_lambda - W*_collapse| = {diff:.3e} "
          f"(max training move of W {moved:.3e}; max loss_after difference {loss_diff:.3e})")
    return diff


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-checks", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    for fam in ("bert", "llama"):
        out = build_fixture(fam)
        for cfg, stem in (("config.yaml", "expected"), ("config-mean.yaml", "expected-mean")):
            rep = run_reference(os.path.join(out, cfg), os.path.join(out, stem + ".safetensors"),
                                os.path.join(out, stem + ".json"))
            losses = ", ".join(f"block {x['layer']}: {x['loss_before']:.6g} -> {x['loss_after']:.6g}"
                               for x in rep["layers"][1:])
            print(f"{fam}/{cfg}: {losses}")
        size = dir_size(out)
        print(f"{out}: {size} bytes")
        assert size < 1 << 20, "fixture dir over 1 MB"
    if a.skip_checks:
        return
    for fam in ("bert", "llama"):
        t1_sanity(fam)
    worst = max(collapse_check("bert", "config.yaml"), collapse_check("bert", "config-mean.yaml"),
                collapse_check("bert", "config.yaml", epochs=40))
    assert worst < 1e-10, f"collapse formulation differs by {worst}"


if __name__ == "__main__":
    main()
