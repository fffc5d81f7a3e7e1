#!/usr/bin/env python3
"""Fine-tunes a Hugging Face causal LM on a selfret run's exported training set with TRL's
SFTTrainer: the path for a corpus that outgrows one CPU (docs/scale.md).

    selfret export-data --run runs/nq --out nq-train.jsonl
    selfret export --run runs/nq --out nq-hf            # or any HF folder / Hub id as the start
    python scripts/train_hf.py --data nq-train.jsonl --model nq-hf --out nq-hf-trained --epochs 2
    selfret query --model nq-hf-trained --corpus corpus.jsonl "a question"

The JSONL lines are {"prompt", "completion", "task"}: TRL's prompt-completion format, so the loss
is on the completion only, as selfret trains. TRL tokenizes prompt and prompt + completion as
whole strings where selfret joins separately tokenized segments, so the ids can differ at a
join (not checked here; TRL warns where it notices a mismatch). Multi-GPU: `accelerate launch scripts/train_hf.py
...` with an FSDP or DeepSpeed accelerate config; nothing here is CPU-specific.

Needs: pip install torch transformers trl datasets (and peft for --lora).
"""

import argparse
import json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="JSONL written by `selfret export-data`")
    ap.add_argument("--model", required=True, help="HF folder (e.g. from `selfret export`) or Hub id")
    ap.add_argument("--out", required=True, help="folder for the fine-tuned model")
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--max-steps", type=int, default=-1, help="stop after this many steps (a smoke test)")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--batch", type=int, default=8, help="examples per device per step")
    ap.add_argument("--lora", type=int, default=32, help="LoRA rank (0: full fine-tuning)")
    ap.add_argument("--max-length", type=int, default=0, help="0: the longest exported example")
    ap.add_argument("--warmup-steps", type=int, default=10)
    args = ap.parse_args()

    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    rows = []
    longest = 0
    with open(args.data, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                r = json.loads(line)
                rows.append({"prompt": r["prompt"], "completion": r["completion"]})
                longest = max(longest, r.get("prompt_tokens", 0) + r.get("completion_tokens", 0))
            except (json.JSONDecodeError, KeyError) as e:
                raise SystemExit(f"{args.data}:{n}: not an exported example ({e})")
    if not rows:
        raise SystemExit(f"{args.data}: no examples")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(args.model)
    peft_config = None
    if args.lora > 0:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=args.lora,
            lora_alpha=2 * args.lora,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            task_type="CAUSAL_LM",
        )
    config = SFTConfig(
        output_dir=args.out,
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        learning_rate=args.lr,
        per_device_train_batch_size=args.batch,
        lr_scheduler_type="cosine",
        warmup_steps=args.warmup_steps,
        max_grad_norm=1.0,
        # Long enough for every example, so none loses its end token to truncation.
        max_length=args.max_length or max(longest + 8, 64),
        bf16=False,
        gradient_checkpointing=False,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        # selfret's completions already end with the end token (` {passage}<eos>`).
        completion_only_loss=True,
    )
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    trainer.train()
    if not trainer.accelerator.is_main_process:
        return
    model = trainer.accelerator.unwrap_model(trainer.model)
    if peft_config is not None:
        model = model.merge_and_unload()
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    print(f"wrote {args.out} ({len(rows)} examples)")


if __name__ == "__main__":
    main()
