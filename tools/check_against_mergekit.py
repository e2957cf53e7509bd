#!/usr/bin/env python3
"""check_against_mergekit: runs mergekit (PyPI) on every fixture config whose semantics it shares and
reports the largest relative difference from the expected outputs our tests hold us to. For TIES it
also counts how many differing elements sit exactly at a fine-tune's magnitude threshold, where
mergekit keeps an arbitrary subset of equal values and we keep the lowest indices; `worst` ignores
configs whose every difference is of that kind.

DARE is left out (mergekit draws its masks from torch's global RNG, ours are counter-based), as is
nothing else. mergekit computes in `dtype: float32` here and writes the base's dtype (`out_dtype`).
Needs mergekit: tools/bench installs it into tools/.venv-mergekit; run this script with that venv's
python:  tools/.venv-mergekit/bin/python tools/check_against_mergekit.py
"""
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile

import torch
import yaml
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference_merge import PREFIXES, layer_t, param  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Fixtures", "merge")
MERGEKIT = os.path.join(os.path.dirname(sys.executable), "mergekit-yaml")


def load_dir(path):
    tensors = {}
    for f in sorted(glob.glob(os.path.join(path, "*.safetensors"))):
        tensors.update(load_file(f))
    return tensors


def tie_explained(family, config, name, differs):
    """How many differing elements have, in some fine-tune, exactly the magnitude of that fine-tune's
    k-th largest |τ|: where mergekit's unstable argsort and our lower-index-first rule may choose apart."""
    cfg = yaml.safe_load(open(config))
    base = load_dir(os.path.join(ROOT, family, "base"))
    model_type = json.load(open(os.path.join(ROOT, family, "base", "config.json")))["model_type"]
    canonical = name
    for prefix in PREFIXES.get(model_type, []):
        canonical = canonical[len(prefix):] if canonical.startswith(prefix) else canonical
    t = layer_t(canonical, json.load(open(os.path.join(ROOT, family, "base", "config.json")))["num_hidden_layers"])
    tied = torch.zeros_like(differs)
    for entry in cfg["models"]:
        ft = load_dir(os.path.join(ROOT, family, "configs", entry["model"]))
        density = param(entry.get("parameters", {}).get("density"), t, 1.0)
        tau = (ft[name].float() - base[name].float()).reshape(-1).abs()
        if density < 1:
            threshold = torch.sort(tau, descending=True).values[int(density * tau.numel()) - 1]
            tied |= tau == threshold
    return int(differs.sum()), int(tied[differs].sum())


def main():
    worst_overall = 0.0
    rows = []
    for config in sorted(glob.glob(os.path.join(ROOT, "*", "configs", "*.yaml"))):
        family = config.split(os.sep)[-3]
        stem = os.path.basename(config)[:-5]
        if stem.startswith("dare"):
            continue
        base_dtype = json.load(open(os.path.join(ROOT, family, "base", "config.json")))["torch_dtype"]
        with tempfile.TemporaryDirectory() as tmp:
            cfg = os.path.join(ROOT, family, "configs", f".mergekit-{stem}.yaml")
            text = open(config).read().replace("seed: 7\n", "")
            with open(cfg, "w") as f:
                f.write(text + f"dtype: float32\nout_dtype: {base_dtype}\n")
            try:
                run = subprocess.run([MERGEKIT, cfg, tmp, "--copy-tokenizer", "--allow-crimes"],
                                     capture_output=True, text=True, cwd=os.path.dirname(cfg))
            finally:
                os.remove(cfg)
            if run.returncode != 0:
                rows.append((family, stem, "mergekit failed: " + run.stderr.strip().splitlines()[-1][:120]))
                continue
            ours = load_file(os.path.join(ROOT, family, "expected", f"{stem}.safetensors"))
            theirs = load_dir(tmp)
        worst, where, missing = 0.0, "", sorted(set(ours) - set(theirs))
        differing = tied = 0
        for name, expected in ours.items():
            if name not in theirs:
                continue
            a, b = theirs[name].float(), expected.float()
            rel = ((a - b).abs() / b.abs().clamp(min=1e-6)).max().item()
            if rel > worst:
                worst, where = rel, name
            if rel > 0 and stem.startswith("ties"):
                n, t = tie_explained(family, config, name, (a != b).reshape(-1))
                differing, tied = differing + n, tied + t
        if differing == 0 or differing != tied:
            worst_overall = max(worst_overall, worst)
        note = f"max rel diff {worst:.3g} ({where})" + (f"; mergekit lacks {len(missing)} tensors" if missing else "")
        if differing:
            note += f"; {differing} differing elements, {tied} of them tied at a TIES threshold (tie order is arbitrary in mergekit)"
        rows.append((family, stem, note))
    for row in rows:
        print(" | ".join(row))
    print(f"worst: {worst_overall:.3g}")


if __name__ == "__main__":
    main()
