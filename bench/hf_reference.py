"""Reference pipeline for `selfret bench query`: the same retrieval done the way the paper's public
code does it, with Hugging Face transformers: `generate` with `prefix_allowed_tokens_fn` over a
Python dict trie, i title beams, j beams over the first passage token then greedy until unique,
one forward per candidate for self-assessment, greedy answer.

Prints one JSON line: {"(i, j)": {"titles_ms", "passages_ms", "assess_ms", "answer_ms", "total_ms"}}
(medians over the queries).
Usage: python hf_reference.py MODEL_DIR GGUF_NAME CORPUS_JSONL QUERIES_JSONL N_QUERIES [THREADS]
"""
import json
import statistics
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

model_dir, gguf, corpus_path, queries_path, n_queries = sys.argv[1:6]
threads = int(sys.argv[6]) if len(sys.argv) > 6 else 2
torch.set_num_threads(threads)
tok = AutoTokenizer.from_pretrained(model_dir, gguf_file=gguf)
model = AutoModelForCausalLM.from_pretrained(model_dir, gguf_file=gguf, torch_dtype=torch.float32).eval()
eos = tok.convert_tokens_to_ids("<|im_end|>")

# Prompt formats: the same strings as src/prompts.rs.
TITLE_CUE = "\n\n Related document title:"
CONTENT_CUE = "\n Related document content:"
ASSESS_CUE = "\n\n Can the document answer the question?"
ACCEPT = " Yes, it can answer the question. Answer:"
REJECT = " No, it cannot answer the question."
enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]

passages = [json.loads(l) for l in open(corpus_path)]
by_title = {}
for p in passages:
    by_title.setdefault(" ".join(p["title"].split()), []).append(p)
cue = enc(CONTENT_CUE)


def build_trie(seqs):
    root = {}
    for i, s in enumerate(seqs):
        node = root
        for t in s:
            node = node.setdefault(t, {})
        node[None] = i
    return root


def leaves(node):
    return sum(1 for k in node if k is None) + sum(leaves(v) for k, v in node.items() if k is not None)


titles = list(by_title)
title_seqs = [enc(" " + t) + cue for t in titles]
title_trie = build_trie(title_seqs)
passage_seqs = {t: [enc(" " + p["text"].strip()) + [eos] for p in ps] for t, ps in by_title.items()}
passage_tries = {t: build_trie(s) for t, s in passage_seqs.items()}


def allowed_fn(trie, start):
    def fn(_batch, ids):
        node = trie
        for t in ids[start:].tolist():
            node = node.get(t)
            if node is None:
                return [eos]
        keys = [k for k in node if k is not None]
        return keys or [eos]
    return fn


def run(query, i, j):
    times = {}
    prompt = enc(f"Question: {query}{TITLE_CUE}")
    x = torch.tensor([prompt])
    t0 = time.perf_counter()
    out = model.generate(x, max_new_tokens=max(map(len, title_seqs)), num_beams=i, num_return_sequences=i,
                         prefix_allowed_tokens_fn=allowed_fn(title_trie, len(prompt)), do_sample=False,
                         eos_token_id=cue[-1], pad_token_id=eos)
    found = []
    for row in out.tolist():
        seq = row[len(prompt):]
        for t, s in zip(titles, title_seqs):
            if seq[:len(s)] == s and t not in found:
                found.append(t)
    times["titles_ms"] = (time.perf_counter() - t0) * 1e3
    t1 = time.perf_counter()
    cands = []
    for t in found:
        ctx = prompt + enc(" " + t) + cue
        trie = passage_tries[t]
        k = min(j, len(trie) if len(passage_seqs[t]) > 1 else 1)
        first = model.generate(torch.tensor([ctx]), max_new_tokens=1, num_beams=max(k, 1), num_return_sequences=max(k, 1),
                               prefix_allowed_tokens_fn=allowed_fn(trie, len(ctx)), do_sample=False, pad_token_id=eos)
        for row in first.tolist():
            seq = row
            node = trie
            for tt in seq[len(ctx):]:
                node = node.get(tt, {})
            # Greedy under the trie until one passage remains, then complete it.
            while leaves(node) > 1:
                nxt = model.generate(torch.tensor([seq]), max_new_tokens=1, do_sample=False,
                                     prefix_allowed_tokens_fn=allowed_fn(trie, len(ctx)), pad_token_id=eos)
                tt = nxt[0, -1].item()
                seq = seq + [tt]
                node = node.get(tt, {})
            cands.append(ctx)
    times["passages_ms"] = (time.perf_counter() - t1) * 1e3
    t2 = time.perf_counter()
    reject = enc(REJECT)
    with torch.no_grad():
        for t in found:
            for s in passage_seqs[t][: j]:
                ids = prompt + enc(" " + t) + cue + s + enc(ASSESS_CUE) + reject
                logits = model(torch.tensor([ids])).logits[0, -len(reject) - 1:-1]
                torch.nn.functional.cross_entropy(logits, torch.tensor(reject))
    times["assess_ms"] = (time.perf_counter() - t2) * 1e3
    t3 = time.perf_counter()
    if found:
        s = passage_seqs[found[0]][0]
        ids = prompt + enc(" " + found[0]) + cue + s + enc(ASSESS_CUE) + enc(ACCEPT)
        model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False, pad_token_id=eos)
    times["answer_ms"] = (time.perf_counter() - t3) * 1e3
    times["total_ms"] = sum(times.values())
    return times


queries = [json.loads(l)["question"] for l in open(queries_path)][: int(n_queries)]
result = {}
run(queries[0], 5, 10)  # untimed warm-up, as `selfret bench query` does
for i, j in [(5, 10), (10, 10)]:
    rows = [run(q, i, j) for q in queries]
    result[f"({i}, {j})"] = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
print(json.dumps(result))
