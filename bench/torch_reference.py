"""PyTorch reference for `selfret bench model`: the same shapes on the same GGUF-dequantised weights.

Prints one JSON object: {"forward": tok/s, "train_full": tok/s, "train_lora": tok/s, "decode": tok/s}.
Usage: python torch_reference.py MODEL_DIR GGUF_NAME [THREADS]
"""
import json
import sys
import time

import torch
from transformers import AutoModelForCausalLM

model_dir, gguf = sys.argv[1], sys.argv[2]
threads = int(sys.argv[3]) if len(sys.argv) > 3 else 2
torch.set_num_threads(threads)
torch.manual_seed(0)


def load():
    return AutoModelForCausalLM.from_pretrained(model_dir, gguf_file=gguf, torch_dtype=torch.float32)


def median_time(fn, reps=3):
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


model = load()
vocab = model.config.vocab_size
ids = (torch.arange(8 * 128) * 7919 % vocab).reshape(8, 128)
out = {}
model.eval()
with torch.no_grad():
    out["forward"] = 1024 / median_time(lambda: model(ids))

    prompt = ids[:1, :64]
    def decode():
        past = model(prompt, use_cache=True).past_key_values
        past.batch_repeat_interleave(10)
        order = torch.tensor([0, 0, 1, 2, 3, 4, 5, 6, 7, 8])
        for step in range(16):
            tok = ((torch.arange(10) * 31 + step * 17) % vocab).reshape(10, 1)
            r = model(tok, past_key_values=past, use_cache=True)
            past = r.past_key_values
            past.reorder_cache(order)
    out["decode"] = 160 / median_time(decode)


def train_step_rate(m, params):
    opt = torch.optim.AdamW(params, lr=1e-5)
    x = ids[:4]
    def step():
        loss = m(x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return 512 / median_time(step, reps=2)


model.train()
out["train_full"] = train_step_rate(model, [p for p in model.parameters()])


class Lora(torch.nn.Module):
    def __init__(self, base, r=8, alpha=16):
        super().__init__()
        self.base = base
        self.a = torch.nn.Parameter(torch.randn(r, base.in_features) / base.in_features ** 0.5)
        self.b = torch.nn.Parameter(torch.zeros(base.out_features, r))
        self.scale = alpha / r

    def forward(self, x):
        return self.base(x) + (x @ self.a.t() @ self.b.t()) * self.scale


lora_model = load()
for p in lora_model.parameters():
    p.requires_grad_(False)
params = []
for layer in lora_model.model.layers:
    for parent, names in ((layer.self_attn, ["q_proj", "k_proj", "v_proj", "o_proj"]),
                          (layer.mlp, ["gate_proj", "up_proj", "down_proj"])):
        for n in names:
            wrapped = Lora(getattr(parent, n))
            setattr(parent, n, wrapped)
            params += [wrapped.a, wrapped.b]
lora_model.train()
out["train_lora"] = train_step_rate(lora_model, params)
print(json.dumps(out))
