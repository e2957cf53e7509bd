#!/usr/bin/env python3
# Purpose: accuracy of merged MiniLM models on the make_minilm_benchmark.py tasks, via StreamMerge forward or PyTorch.
"""eval_merged: per-task and average test accuracy of merged models on the MiniLM benchmark.

The benchmark directory (tools/make_minilm_benchmark.py, default /work/bench/minilm) holds
base/, ft-<task>/, test/<task>.jsonl + test/<task>.labels.json and tasks.json. A merged directory is
StreamMerge's output: an HF directory (config.json + model.safetensors) with heads/ft-<task>.safetensors
holding each fine-tune's classifier.weight [C,384] / classifier.bias [C].

Modes (they can be combined; each adds rows to one markdown table):
  MERGED_DIR ... --streammerge BIN   for each merged dir and task runs
        BIN forward MERGED_DIR --input DIR/test/<task>.jsonl --head MERGED_DIR/heads/ft-<task>.safetensors
            --out <tmp>.safetensors
      and reads `logits` [N, C] (the head applied to BERT's pooler output).
  MERGED_DIR ... --torch             the same in PyTorch: MERGED_DIR loaded as transformers BertModel,
                                     logits = pooler_output @ W^T + b with the head file.
  --finetunes                        each DIR/ft-<task> on its own task with its own classifier (PyTorch).
  --base-heads                       the base model with each fine-tune's head (PyTorch; a floor).
  --torch-ta 0.1,0.2,0.3             pure-PyTorch task arithmetic theta0 + lambda * sum_t (theta_t - theta0)
                                     over every floating-point tensor of the BERT body (heads kept per task);
                                     needs no StreamMerge.
  --save-ta DIR                      also write each --torch-ta model as a merged directory
                                     (DIR/torch-ta-<lambda>/ with heads/), e.g. to cross-check StreamMerge.
Options: --tasks a,b (default: all in tasks.json), --json PATH (results as JSON), --threads 2.

Examples:
  tools/.venv-torch/bin/python tools/eval_merged.py --bench /work/bench/minilm --finetunes --torch-ta 0.1,0.2,0.3,0.5,1.0
  tools/.venv-torch/bin/python tools/eval_merged.py --bench /work/bench/minilm \
      --streammerge .build/release/streammerge /tmp/merged/ta-0.3 /tmp/merged/ties
  tools/.venv-torch/bin/python tools/eval_merged.py --bench /work/bench/minilm --torch /tmp/merged/ta-0.3
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402


def load_bench(bench, only):
    with open(os.path.join(bench, "tasks.json")) as f:
        meta = json.load(f)
    tasks = [t["name"] for t in meta["tasks"]]
    if only:
        want = [t for t in only.split(",") if t]
        missing = [t for t in want if t not in tasks]
        if missing:
            sys.exit(f"unknown task(s) {missing}; the benchmark has {tasks}")
        tasks = want
    data = {}
    for t in tasks:
        with open(os.path.join(bench, "test", f"{t}.jsonl")) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        with open(os.path.join(bench, "test", f"{t}.labels.json")) as f:
            labels = json.load(f)
        assert len(rows) == len(labels), t
        data[t] = (rows, np.asarray(labels))
    return meta, tasks, data


def accuracy(logits, labels):
    logits = np.asarray(logits)
    assert logits.shape[0] == len(labels), (logits.shape, len(labels))
    return float((logits.argmax(-1) == labels).mean())


# ------------------------------------------------------------------------------------ StreamMerge

def eval_streammerge(binary, merged, tasks, data, tmp):
    from safetensors.numpy import load_file
    res = {}
    for t in tasks:
        head = os.path.join(merged, "heads", f"ft-{t}.safetensors")
        out = os.path.join(tmp, f"logits-{t}.safetensors")
        cmd = [binary, "forward", merged, "--input", os.path.join(BENCH, "test", f"{t}.jsonl"),
               "--head", head, "--out", out]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if p.returncode != 0:
            sys.stderr.write(f"FAILED ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-2000:]}\n")
            res[t] = float("nan")
            continue
        logits = load_file(out)["logits"]
        res[t] = accuracy(logits, data[t][1])
        print(f"  {os.path.basename(merged)} / {t}: {res[t]:.4f} ({time.perf_counter() - t0:.1f} s)",
              file=sys.stderr, flush=True)
        os.remove(out)
    return res


# ---------------------------------------------------------------------------------------- PyTorch

def collate(rows):
    import torch
    L = max(len(r["input_ids"]) for r in rows)
    ids = torch.zeros(len(rows), L, dtype=torch.long)
    mask = torch.zeros(len(rows), L, dtype=torch.long)
    tt = torch.zeros(len(rows), L, dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n] = torch.tensor(r["input_ids"])
        mask[i, :n] = torch.tensor(r.get("attention_mask", [1] * n))
        tt[i, :n] = torch.tensor(r.get("token_type_ids", [0] * n))
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": tt}


def pooled(model, rows, bs=64):
    """BERT pooler output [N, H] in eval mode (batches of similar length, returned in input order)."""
    import torch
    model.eval()
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    out = None
    with torch.no_grad():
        for s in range(0, len(order), bs):
            idx = order[s:s + bs]
            z = model(**collate([rows[i] for i in idx])).pooler_output
            if out is None:
                out = torch.empty(len(rows), z.shape[1], dtype=z.dtype)
            out[torch.tensor(idx)] = z
    return out


def load_head(path):
    from safetensors.torch import load_file
    h = load_file(path)
    return h["classifier.weight"].float(), h["classifier.bias"].float()


def ft_head(ft_dir):
    from safetensors import safe_open
    with safe_open(os.path.join(ft_dir, "model.safetensors"), "pt") as f:
        return f.get_tensor("classifier.weight").float(), f.get_tensor("classifier.bias").float()


def body_state(path):
    """Floating-point tensors of the BERT body of an HF directory, names without the 'bert.' prefix."""
    from safetensors import safe_open
    sd = {}
    files = [os.path.join(path, f) for f in sorted(os.listdir(path)) if f.endswith(".safetensors")]
    for fn in files:
        with safe_open(fn, "pt") as f:
            for k in f.keys():
                if k.startswith("classifier."):
                    continue
                v = f.get_tensor(k)
                if not v.is_floating_point():
                    continue
                sd[k[5:] if k.startswith("bert.") else k] = v.float()
    return sd


def bert_from_state(config_dir, sd):
    import torch
    from transformers import BertConfig, BertModel
    cfg = BertConfig.from_pretrained(config_dir)
    model = BertModel(cfg, add_pooling_layer=True)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if not m.endswith("position_ids") and not m.endswith("token_type_ids")]
    if missing or unexpected:
        raise SystemExit(f"state mismatch: missing {missing[:5]} unexpected {unexpected[:5]}")
    return model.to(torch.float32)


def eval_body(model, heads, tasks, data):
    res = {}
    for t in tasks:
        W, b = heads[t]
        z = pooled(model, data[t][0])
        res[t] = accuracy((z @ W.T + b).numpy(), data[t][1])
    return res


def eval_torch_merged(merged, tasks, data):
    from transformers import BertModel
    model = BertModel.from_pretrained(merged, add_pooling_layer=True)
    model.to(__import__("torch").float32)
    heads = {t: load_head(os.path.join(merged, "heads", f"ft-{t}.safetensors")) for t in tasks}
    return eval_body(model, heads, tasks, data)


def eval_finetunes(tasks, data):
    from transformers import BertForSequenceClassification
    res = {}
    for t in tasks:
        d = os.path.join(BENCH, f"ft-{t}")
        model = BertForSequenceClassification.from_pretrained(d)
        z = pooled(model.bert, data[t][0])
        W, b = model.classifier.weight.detach(), model.classifier.bias.detach()
        res[t] = accuracy((z @ W.T + b).numpy(), data[t][1])
    return res


def write_merged_dir(out, sd, tasks, heads):
    from safetensors.torch import save_file
    os.makedirs(os.path.join(out, "heads"), exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(out, "model.safetensors"),
              metadata={"format": "pt"})
    base = os.path.join(BENCH, "base")
    for fn in os.listdir(base):
        if fn != "model.safetensors":
            shutil.copyfile(os.path.join(base, fn), os.path.join(out, fn))
    for t in tasks:
        W, b = heads[t]
        save_file({"classifier.weight": W.contiguous(), "classifier.bias": b.contiguous()},
                  os.path.join(out, "heads", f"ft-{t}.safetensors"), metadata={"format": "pt"})


# ------------------------------------------------------------------------------------------- main

def fmt_table(rows, tasks):
    head = "| model | " + " | ".join(tasks) + " | avg |"
    sep = "|---|" + "---:|" * (len(tasks) + 1)
    lines = [head, sep]
    for name, res in rows:
        vals = [res.get(t, float("nan")) for t in tasks]
        avg = float(np.mean(vals))
        lines.append(f"| {name} | " + " | ".join(f"{100 * v:.1f}" for v in vals) + f" | {100 * avg:.1f} |")
    return "\n".join(lines)


BENCH = None


def main():
    global BENCH
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("merged", nargs="*", help="merged HF directories (StreamMerge outputs)")
    ap.add_argument("--bench", default="/work/bench/minilm")
    ap.add_argument("--streammerge", help="path to the StreamMerge binary (forward subcommand)")
    ap.add_argument("--torch", action="store_true", help="evaluate the merged dirs in PyTorch instead")
    ap.add_argument("--finetunes", action="store_true", help="each fine-tune on its own task")
    ap.add_argument("--base-heads", action="store_true", help="the base model with each fine-tune's head")
    ap.add_argument("--torch-ta", default=None, help="comma-separated lambdas for pure-PyTorch task arithmetic")
    ap.add_argument("--save-ta", default=None, help="write each --torch-ta model as a merged dir under this dir")
    ap.add_argument("--tasks", default=None)
    ap.add_argument("--json", default=None, help="write the results as JSON here")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    BENCH = os.path.abspath(args.bench)
    meta, tasks, data = load_bench(BENCH, args.tasks)

    if args.merged and not (args.torch or args.streammerge):
        sys.exit("merged dirs given: pass --streammerge BIN or --torch")
    if not (args.merged or args.finetunes or args.torch_ta or args.base_heads):
        sys.exit("nothing to evaluate: give merged dirs, --finetunes, --base-heads or --torch-ta")

    rows = []
    need_torch = args.torch or args.finetunes or args.torch_ta or args.base_heads
    if need_torch:
        import torch
        torch.set_num_threads(args.threads)
        torch.set_num_interop_threads(1)

    if args.finetunes:
        rows.append(("fine-tuned (own task)", eval_finetunes(tasks, data)))
        print(f"fine-tunes done", file=sys.stderr, flush=True)

    if args.base_heads or args.torch_ta:
        base_sd = body_state(os.path.join(BENCH, "base"))
        heads = {t: ft_head(os.path.join(BENCH, f"ft-{t}")) for t in tasks}
    if args.base_heads:
        model = bert_from_state(os.path.join(BENCH, "base"), base_sd)
        rows.append(("base + ft heads", eval_body(model, heads, tasks, data)))

    if args.torch_ta:
        taus = None
        # task vectors over all tasks of the benchmark selection
        for t in tasks:
            sd = body_state(os.path.join(BENCH, f"ft-{t}"))
            assert set(sd) == set(base_sd), (t, set(sd) ^ set(base_sd))
            if taus is None:
                taus = {k: torch.zeros_like(v) for k, v in base_sd.items()}
            for k in taus:
                taus[k] += sd[k] - base_sd[k]
        for lam_s in [s for s in args.torch_ta.split(",") if s]:
            lam = float(lam_s)
            sd = {k: base_sd[k] + lam * taus[k] for k in base_sd}
            model = bert_from_state(os.path.join(BENCH, "base"), sd)
            rows.append((f"torch TA lambda={lam_s}", eval_body(model, heads, tasks, data)))
            print(f"torch TA {lam_s} done", file=sys.stderr, flush=True)
            if args.save_ta:
                write_merged_dir(os.path.join(args.save_ta, f"torch-ta-{lam_s}"), sd, tasks, heads)

    if args.merged:
        with tempfile.TemporaryDirectory(prefix="eval_merged-") as tmp:
            for m in args.merged:
                m = os.path.abspath(m)
                name = os.path.basename(m.rstrip("/"))
                if args.torch:
                    rows.append((f"{name} (torch)", eval_torch_merged(m, tasks, data)))
                else:
                    rows.append((name, eval_streammerge(os.path.abspath(args.streammerge), m, tasks, data, tmp)))

    print(fmt_table(rows, tasks))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"tasks": tasks, "rows": [{"name": n, "acc": r, "avg": float(np.mean([r[t] for t in tasks]))}
                                                for n, r in rows]}, f, indent=1)


if __name__ == "__main__":
    main()
