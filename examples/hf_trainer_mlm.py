"""Pretrain a masked language model inside `transformers.Trainer`, as one peer of a swarm.

    python examples/hf_trainer_mlm.py --data corpus/*.txt                      # the first peer starts the run
    python examples/hf_trainer_mlm.py --data corpus/*.txt --initial-peers ADDR # every other volunteer joins it

The model is an `AutoModelForMaskedLM` built from a config (no download), the data are local text
files read with `datasets.load_dataset("text", data_files=...)`, and the tokenizer is trained on
them (every peer trains the same one from the same files). Only three lines differ from a plain
Trainer script: `swarm.join`, `swarm_optimizers` and `SwarmCallback`. The peer prints
`MADDR <address>` (what others pass as --initial-peers) and, with --report, writes its losses,
swarm epoch and parameter hash as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile

import torch

import swarm
from swarm.integrations.start_together import wait_for_peers
from swarm.integrations.transformers import SwarmCallback, swarm_optimizers


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="+", required=True, help="text files, one sample per line")
    p.add_argument("--run-id", default="hf-trainer-mlm")
    p.add_argument("--initial-peers", nargs="*", default=[])
    p.add_argument("--target-batch-size", type=int, default=64, help="samples per global step, over the swarm")
    p.add_argument("--batch-size", type=int, default=8, help="this peer's micro-batch")
    p.add_argument("--max-steps", type=int, default=200, help="this peer's Trainer steps")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--vocab-size", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0, help="this peer's data order")
    p.add_argument("--wait-peers", type=int, default=1, help="wait (up to 5 min) until this many peers train, then start")
    p.add_argument("--report", help="write {losses, swarm_epoch, params_hash} here as JSON")
    p.add_argument("--log-swarm", action="store_true", help="log the swarm's rounds (INFO) to stderr")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.log_swarm:
        from swarm.cli import setup_logging
        setup_logging()
    from datasets import load_dataset
    from transformers import (
        AutoConfig,
        AutoModelForMaskedLM,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainingArguments,
    )

    from peers.data.tokenizer import to_hf_tokenizer, train_tokenizer

    collab = swarm.join(run_id=args.run_id, initial_peers=args.initial_peers,
                        config=swarm.EngineConfig(target_batch_size=args.target_batch_size))
    print("MADDR", collab.visible_maddrs()[0], flush=True)
    try:
        dataset = load_dataset("text", data_files=args.data, split="train").filter(lambda row: row["text"].strip() != "")
        tokenizer = to_hf_tokenizer(train_tokenizer(dataset["text"], args.vocab_size), model_max_length=args.seq_len)
        dataset = dataset.map(lambda rows: tokenizer(rows["text"], truncation=True, max_length=args.seq_len),
                              batched=True, remove_columns=["text"])
        config = AutoConfig.for_model("bert", vocab_size=len(tokenizer), hidden_size=128, num_hidden_layers=2,
                                      num_attention_heads=2, intermediate_size=256, max_position_embeddings=args.seq_len,
                                      pad_token_id=tokenizer.pad_token_id)
        torch.manual_seed(0)   # every peer starts from the same parameters (a late joiner downloads them anyway)
        model = AutoModelForMaskedLM.from_config(config)

        training_args = TrainingArguments(
            output_dir=tempfile.mkdtemp(prefix="hf-trainer-mlm-"), per_device_train_batch_size=args.batch_size,
            max_steps=args.max_steps, learning_rate=args.lr, logging_steps=5, save_strategy="no", report_to=[],
            dataloader_drop_last=True, seed=args.seed, disable_tqdm=True, use_cpu=not torch.cuda.is_available(),
        )
        optimizers = swarm_optimizers(collab, model, training_args, torch.optim.AdamW, lr=args.lr)
        trainer = Trainer(model=model, args=training_args, train_dataset=dataset, optimizers=optimizers,
                          data_collator=DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15),
                          callbacks=[SwarmCallback(optimizers[0])])
        wait_for_peers(collab, args.wait_peers, timeout=300)
        trainer.train()
        swarm_opt = optimizers[0]
        if args.report:
            losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
            with open(args.report, "w") as f:
                json.dump({"losses": losses, "swarm_epoch": swarm_opt.epoch, "params_hash": swarm_opt.params_hash(),
                           "pid": os.getpid()}, f)
    finally:
        collab.shutdown()


if __name__ == "__main__":
    main()
