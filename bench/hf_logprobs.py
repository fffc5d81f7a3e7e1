#!/usr/bin/env python3
"""Log-probabilities of a Hugging Face folder under transformers, for `selfret bench export`.

Reads {"prompts": [[token ids], ...]} from --prompts and prints one JSON line:
{"token_logprobs": [[log P(id[t+1] | ids[..=t]) for each t], ...],
 "last": [[log P(v | whole prompt) for every vocabulary id v], ...],
 "transformers": version}. f32, eager attention, on the CPU, so the figures compare the
weights and the arithmetic, not a kernel's precision.
"""

import argparse
import json

import torch
import transformers
from transformers import AutoModelForCausalLM


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="Hugging Face folder (selfret export)")
    ap.add_argument("--prompts", required=True, help="JSON file written by selfret")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = AutoModelForCausalLM.from_pretrained(
        args.model, torch_dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    with open(args.prompts, encoding="utf-8") as f:
        prompts = json.load(f)["prompts"]
    token_logprobs, last = [], []
    with torch.no_grad():
        for ids in prompts:
            x = torch.tensor([ids], dtype=torch.long)
            logp = torch.log_softmax(model(x).logits[0].float(), dim=-1)
            nxt = torch.tensor(ids[1:], dtype=torch.long)
            token_logprobs.append(logp[:-1].gather(1, nxt[:, None])[:, 0].tolist())
            last.append(logp[-1].tolist())
    print(
        json.dumps(
            {"token_logprobs": token_logprobs, "last": last, "transformers": transformers.__version__}
        )
    )


if __name__ == "__main__":
    main()
