#!/usr/bin/env python3
# Purpose: PyTorch float64 autograd reference for SAMerging/AdaMerging end-to-end coefficient gradients and one SAM + Adam step.
"""endtoend_reference: golden losses, ∂L/∂λ and a SAM step for the end-to-end merge methods.

Independent of StreamMerge's code: whole transformers models (BertModel, LlamaForCausalLM; eager
attention, eval mode, float64) called through torch.func.functional_call with merged weights, and
autograd for the gradients. The Llama family's internal float32 downcasts (RMSNorm, rotary cos/sin,
attention softmax) are patched to stay in float64 (make_kernel_goldens.float64_patches), so finite
differences agree with autograd. Run on the fixture families Fixtures/distill/{bert,llama} (base, ft-a,
ft-b, ft-c, calib/{a,b,c}.jsonl); writes Fixtures/endtoend/<family>.json.

Contract (StreamMerge's SAMerging and AdaMerging follow it; README "SAMerging and AdaMerging"):
- Tasks t = 0, 1, 2 are ft-a, ft-b, ft-c with calibration a, b, c; τ_t = θ_t − θ₀ per tensor.
- One coefficient λ[t][k] per task and per floating-point tensor k of the base, k ordered by the
  base's stored tensor name (sorted); student W_k = θ₀_k + Σ_t λ[t][k]·τ_t,k. BERT fine-tunes'
  classifier.* tensors are task heads, not merged. Fixture values: λ[t][k] = 0.3 + 0.1·sin(1 + 3t + 7k).
- Batches as tools/prodistill_reference.py makes them: examples truncated to max_length 8, consecutive
  batches of 4, right-padded to the batch's longest with the config's pad_token_id (0 if null). One
  batch per task: index 0 of a, 1 of b, 2 of c.
- BERT: features by head_pooling — pooler (pooler_output, the default), cls (last_hidden_state[:, 0])
  or mean (mean of last_hidden_state over attention_mask 1) — then task t's classifier (the same fixed
  head for teacher and student); items = examples. Llama: LlamaForCausalLM logits (the student's
  lm_head merged, the teacher's its own); items = positions with attention_mask 1.
- Teacher of task t: the same model with θ_t on the same batch.
- samerging: L = Σ_t mean_items KL(softmax(teacher/τ) ‖ softmax(student/τ)), τ = 2, no τ² factor.
- adamerging: L = Σ_t mean_items H(softmax(student)).
- SAM step: g = ∂L/∂λ; ε = ρ·λ²⊙g / (‖|λ|⊙g‖₂ + 1e-12) over all T×K coefficients, ρ = 0.07;
  g′ = ∂L/∂λ at λ + ε on the same batches; λ_after = one torch.optim.Adam step (lr 1e-3, fresh state)
  from λ with gradient g′.
- Autograd is checked against central finite differences (h = 1e-4) on 20 coefficients.

usage: tools/.venv-torch/bin/python tools/endtoend_reference.py [--out Fixtures/endtoend]
"""
import argparse
import json
import math
import os
import sys

import torch
from torch.func import functional_call

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import prodistill_reference as ref  # noqa: E402
from make_kernel_goldens import float64_patches  # noqa: E402

FIXTURES = os.path.normpath(os.path.join(HERE, "..", "Fixtures"))
TASKS = ["a", "b", "c"]
BATCH_SIZE, MAX_LENGTH, RHO, LR, TEMPERATURE = 4, 8, 0.07, 1e-3, 2.0


class Family:
    def __init__(self, name):
        import transformers
        root = os.path.join(FIXTURES, "distill", name)
        config = transformers.AutoConfig.from_pretrained(os.path.join(root, "base"))
        self.bert = config.model_type in ("bert", "roberta")
        if self.bert:
            model = transformers.AutoModel.from_config(config, attn_implementation="eager")
        else:
            model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
        self.model = model.to(torch.float64).eval()
        self.prefix = config.model_type + "." if self.bert else ""
        base = {k: v.to(torch.float64) for k, v in ref.load_checkpoint(os.path.join(root, "base")).items()}
        self.names = sorted(k for k, v in base.items() if v.is_floating_point())
        tunes = [{k: v.to(torch.float64) for k, v in ref.load_checkpoint(os.path.join(root, f"ft-{t}")).items()} for t in TASKS]
        self.base = [base[k] for k in self.names]
        self.taus = [[tune[k] - base[k] for k in self.names] for tune in tunes]
        self.teachers = [[tune[k] for k in self.names] for tune in tunes]
        self.heads = [(tune["classifier.weight"], tune["classifier.bias"]) for tune in tunes] if self.bert else None
        pad = config.pad_token_id if config.pad_token_id is not None else 0
        calib = [ref.read_calibration(os.path.join(root, "calib", f"{t}.jsonl"), MAX_LENGTH) for t in TASKS]
        batches = ref.make_batches(calib, BATCH_SIZE, pad, self.bert)
        self.batches = [[b for b in batches if b["task"] == t][t] for t in range(len(TASKS))]
        self.shapes = {t: tuple(b["inputs"]["input_ids"].shape) for t, b in enumerate(self.batches)}
        self.pad = pad

    def logits(self, weights, task, pooling):
        """Logits and per-item weights of `task`'s batch through the model with `weights` (in names order)."""
        params = {self.strip(k): w for k, w in zip(self.names, weights)}
        batch = self.batches[task]
        out = functional_call(self.model, params, args=(), kwargs=batch["inputs"])
        mask = batch["mask"].to(torch.float64)
        if not self.bert:
            return out.logits.reshape(-1, out.logits.shape[-1]), (mask / mask.sum()).reshape(-1)
        h = out.last_hidden_state
        features = {"pooler": lambda: out.pooler_output, "cls": lambda: h[:, 0],
                    "mean": lambda: (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)}[pooling]()
        w, b = self.heads[task]
        return features @ w.T + b, torch.full((h.shape[0],), 1.0 / h.shape[0], dtype=torch.float64)

    def strip(self, name):
        return name[len(self.prefix):] if self.prefix and name.startswith(self.prefix) else name

    def loss(self, lam, method, pooling="pooler"):
        total = 0
        for t in range(len(TASKS)):
            weights = [b + sum(lam[s, k] * self.taus[s][k] for s in range(len(TASKS))) for k, b in enumerate(self.base)]
            student, item_weights = self.logits(weights, t, pooling)
            if method == "samerging":
                with torch.no_grad():
                    teacher, _ = self.logits(self.teachers[t], t, pooling)
                p = torch.log_softmax(teacher / TEMPERATURE, -1)
                q = torch.log_softmax(student / TEMPERATURE, -1)
                per_item = (p.exp() * (p - q)).sum(-1)
            else:
                q = torch.log_softmax(student, -1)
                per_item = -(q.exp() * q).sum(-1)
            total = total + (item_weights * per_item).sum()
        return total

    def gradient(self, lam, method, pooling="pooler"):
        lam = lam.detach().clone().requires_grad_(True)
        loss = self.loss(lam, method, pooling)
        (g,) = torch.autograd.grad(loss, lam)
        return loss.item(), g


def rows(t):
    return [[float(x) for x in row] for row in t]


def finite_difference_error(family, lam, method, g):
    """Largest |autograd − central difference| / max|g| over 20 coefficients spread over tasks and tensors."""
    T, K = lam.shape
    worst = 0.0
    for n in range(20):
        t, k = n % T, (n * 7919) % K
        h = 1e-4
        up, down = lam.clone(), lam.clone()
        up[t, k] += h
        down[t, k] -= h
        with torch.no_grad():
            numeric = (family.loss(up, method) - family.loss(down, method)).item() / (2 * h)
        worst = max(worst, abs(numeric - g[t, k].item()) / g.abs().max().item())
    return worst


def build(name):
    import transformers
    family = Family(name)
    with float64_patches(family.model):
        return record(family, name, transformers.__version__)


def record(family, name, transformers_version):
    T, K = len(TASKS), len(family.names)
    lam = torch.tensor([[0.3 + 0.1 * math.sin(1 + 3 * t + 7 * k) for k in range(K)] for t in range(T)], dtype=torch.float64)
    pooling = "pooler" if family.bert else None
    result = {"family": name, "models": [f"ft-{t}" for t in TASKS], "tensors": family.names, "batch_size": BATCH_SIZE,
              "max_length": MAX_LENGTH, "batches": list(range(T)), "pad_id": family.pad,
              "batch_shapes": [list(family.shapes[t]) for t in range(T)],
              "lambda_formula": "0.3 + 0.1*sin(1 + 3t + 7k)", "lambda": rows(lam)}
    fd = 0.0
    for method in ("samerging", "adamerging"):
        loss, g = family.gradient(lam, method)
        result[method] = {"head_pooling": pooling, "loss": loss, "gradient": rows(g)}
        if method == "samerging":
            result[method]["temperature"] = TEMPERATURE
            samerging_gradient = g
        fd = max(fd, finite_difference_error(family, lam, method, g))
    g = samerging_gradient
    epsilon = RHO * lam ** 2 * g / ((lam.abs() * g).norm() + 1e-12)
    loss_perturbed, g_perturbed = family.gradient(lam + epsilon, "samerging")
    param = torch.nn.Parameter(lam.clone())
    optimizer = torch.optim.Adam([param], lr=LR, betas=(0.9, 0.999), eps=1e-8)
    param.grad = g_perturbed.clone()
    optimizer.step()
    result["sam"] = {"rho": RHO, "lr": LR, "epsilon": rows(epsilon), "loss_perturbed": loss_perturbed,
                     "gradient_perturbed": rows(g_perturbed), "lambda_after": rows(param.detach())}
    if family.bert:
        result["pooling"] = {}
        for pooling in ("cls", "mean"):
            loss, g = family.gradient(lam, "samerging", pooling)
            result["pooling"][pooling] = {"loss": loss, "gradient": rows(g)}
    result["finite_difference_max_relative_error"] = fd
    result["versions"] = {"torch": torch.__version__, "transformers": transformers_version}
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(FIXTURES, "endtoend"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    os.makedirs(a.out, exist_ok=True)
    for name in ("bert", "llama"):
        result = build(name)
        assert result["finite_difference_max_relative_error"] < 1e-6, result["finite_difference_max_relative_error"]
        with open(os.path.join(a.out, f"{name}.json"), "w") as f:
            json.dump(result, f, indent=1)
        print(f"{name}: samerging loss {result['samerging']['loss']:.6g}, adamerging loss {result['adamerging']['loss']:.6g}, "
              f"finite differences {result['finite_difference_max_relative_error']:.2e}, batches {result['batch_shapes']}")


if __name__ == "__main__":
    main()
