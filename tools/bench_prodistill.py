#!/usr/bin/env python3
"""bench_prodistill: the PyTorch half of the ProDistill speed comparison (DESIGN.md section 9).

For each config it runs tools/prodistill_reference.py --time-layer L in a subprocess (torch limited to
--threads threads) and prints one JSON line per config:
  {"bench": "prodistill", "impl": "pytorch-reference", "config": ..., "layer": L, "ms_per_step": ...,
   "steps": ..., "seconds": ..., "epochs": ..., "batches_per_epoch": ..., "tasks": ..., "examples": ...,
   "threads": ..., "loadavg_1min": ...}
ms_per_step = wall time of block L's training loop (forward + backward of the block on one batch and
one Adam step on every λ, T·P coefficients) / number of steps; the inputs of block L are computed
first and not timed. loadavg_1min is the 1-minute load average after the run: other work on the
machine (a build) inflates multi-threaded torch timings badly, so compare runs made on a quiet machine.
StreamMerge prints its own per-step time for the same config; compare the two.

Default configs: Fixtures/distill/bert/config.yaml, and the MiniLM-sized benchmark
/work/bench/minilm/configs/prodistill.yaml (all-MiniLM-L6-v2: hidden 384, 6 layers; 64 examples per
task, max_length 64; built by tools/make_minilm_benchmark.py) when it exists; otherwise that one is
skipped with a message.
A config with fewer than --min-steps steps per block is run with more epochs (per-step cost does not
depend on the epoch count); --epochs N sets the count outright (e.g. a shorter MiniLM run). Blocks
before --layer are plain task arithmetic (--fast-inputs) unless --train-earlier; this only matters
for --layer > 0.

usage: tools/.venv-torch/bin/python tools/bench_prodistill.py [CONFIG ...] [--layer 0] [--threads 2]
                                                              [--min-steps 200] [--epochs N] [--train-earlier]
"""
import argparse
import json
import math
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import prodistill_reference as ref  # noqa: E402

DEFAULTS = [os.path.normpath(os.path.join(HERE, "..", "Fixtures", "distill", "bert", "config.yaml")),
            "/work/bench/minilm/configs/prodistill.yaml"]


def batches_per_epoch(settings):
    n = 0
    for path in settings["calibration"]:
        count = sum(1 for line in open(path) if line.strip())
        n += math.ceil(count / settings["batch_size"])
    return n


def bench(config, layer, threads, min_steps, train_earlier, epochs=None):
    settings = ref.load_settings(config)
    per_epoch = batches_per_epoch(settings)
    if epochs is None:
        epochs = max(settings["epochs"], math.ceil(min_steps / per_epoch))
    cmd = [sys.executable, os.path.join(HERE, "prodistill_reference.py"), config, "--time-layer", str(layer),
           "--threads", str(threads), "--epochs", str(epochs)]
    if not train_earlier:
        cmd.append("--fast-inputs")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.stderr.write(out.stderr)
        raise SystemExit(f"bench_prodistill: the reference failed on {config}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    line = {"bench": "prodistill", "impl": "pytorch-reference", "config": config,
            "config_epochs": settings["epochs"], **{k: v for k, v in result.items() if k != "impl"},
            "loadavg_1min": round(os.getloadavg()[0], 2)}
    print(json.dumps(line), flush=True)
    return line


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("configs", nargs="*")
    ap.add_argument("--layer", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-steps", type=int, default=200)
    ap.add_argument("--train-earlier", action="store_true")
    ap.add_argument("--epochs", type=int, help="run exactly this many epochs (overrides the config and --min-steps)")
    a = ap.parse_args()
    configs = a.configs or DEFAULTS
    for config in configs:
        if not os.path.exists(config):
            print(f"bench_prodistill: skipping {config} (not found)", file=sys.stderr, flush=True)
            continue
        bench(config, a.layer, a.threads, a.min_steps, a.train_earlier, a.epochs)


if __name__ == "__main__":
    main()
