"""`swarm eval`: a trained model's held-out accuracy next to the same model at its random init.

    swarm eval --task swav --checkpoint runs/demo/final.pt     # linear-probe accuracy, trained vs random init
    swarm eval --task albert --checkpoint runs/demo/final.pt   # masked-token accuracy, trained vs random init
    swarm eval --task swav --random-init                       # the baseline alone

The task is rebuilt from the checkpoint's own record of its task, options, seed and data path
(peers.eval.checkpoint), overridden by --config and then by flags; the random-init model is
`task.build_model()` with that seed, i.e. the run's starting point. The metric is the task's
`evaluate()` (SwAV: a linear probe on frozen backbone features; ALBERT: masked-token accuracy on
held-out text). Prints one JSON object (and writes it with --output):

    {"task": "swav", "metric": "linear_probe_accuracy", "accuracy": 0.71, "random_init_accuracy": 0.64, ...}
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

from swarm.errors import ConfigError

logger = logging.getLogger(__name__)

# The accuracy each task reports as its headline number (the first metric with "accuracy" in its name otherwise).
PRIMARY_METRIC = {"swav": "linear_probe_accuracy", "albert": "mlm_accuracy"}


def register_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="held-out accuracy of a trained model vs its random init",
                       description="Evaluate a checkpoint (e.g. the demo's runs/RUN/final.pt) and the same model at random init.")
    p.add_argument("--task", help="task plug-in (default: the checkpoint's)")
    p.add_argument("--checkpoint", type=Path, help="swarm join --save-final file, a coordinator checkpoint folder, or a state dict")
    p.add_argument("--stored-bn-stats", action="store_true", help="swav: probe with the stored BatchNorm statistics (default: re-estimate them)")
    p.add_argument("--random-init", action="store_true", help="evaluate only the randomly initialised model (no checkpoint)")
    p.add_argument("--no-baseline", action="store_true", help="skip the random-init model")
    p.add_argument("--config", help="experiment YAML (task, task_options, seed, data_path)")
    p.add_argument("--data-path", help="data to evaluate on (default: the checkpoint's, else the task's default)")
    p.add_argument("--size", help="model size/arch, if the checkpoint does not say")
    p.add_argument("--seed", type=int, help="seed of the random-init model (default: the checkpoint's, else 0)")
    p.add_argument("--max-batches", type=int, default=20, help="evaluation budget (swav: 500 probe images per batch)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--output", type=Path, help="also write the JSON here")
    p.set_defaults(func=cmd_eval)


def _settings(args: argparse.Namespace, meta: dict[str, Any]):
    from peers.tasks import TaskSettings
    from swarm.config import load_run_config

    config = load_run_config(args.config) if args.config else None
    task = args.task or (config.task if config else None) or meta.get("task")
    if not task:
        raise ConfigError("which task? pass --task (the checkpoint does not say)")
    if meta.get("task") and meta["task"] != task:
        raise ConfigError(f"checkpoint {args.checkpoint} holds a {meta['task']} model, not {task}")
    options = dict(meta.get("task_options") or {})
    if config is not None:
        options.update(config.task_options)
    if args.size:
        options["size"] = args.size
    if getattr(args, "stored_bn_stats", False):
        options["probe_bn"] = "stored"
    seed = args.seed if args.seed is not None else meta.get("seed", config.seed if config else 0)
    data_path = args.data_path or (config.data_path if config else None) or meta.get("data_path")
    micro_batch_size = int(meta.get("micro_batch_size") or (config.micro_batch_size if config else 8))
    return task, TaskSettings(data_path=data_path, micro_batch_size=micro_batch_size, seed=int(seed), options=options)


def _primary(task: str, metrics: dict[str, float]) -> str:
    if task in PRIMARY_METRIC and PRIMARY_METRIC[task] in metrics:
        return PRIMARY_METRIC[task]
    return next((k for k in metrics if "accuracy" in k), next(iter(metrics)))


def evaluate_checkpoint(args: argparse.Namespace) -> dict[str, Any]:
    """What `swarm eval` prints, as a dict."""
    from peers.tasks import get_task

    from .checkpoint import load_checkpoint, load_model_state, load_params

    if args.random_init and args.checkpoint:
        raise ConfigError("pass either --checkpoint or --random-init, not both")
    if not args.random_init and not args.checkpoint:
        raise ConfigError("pass --checkpoint PATH (e.g. runs/demo/final.pt), or --random-init for the baseline alone")
    if args.max_batches < 1:
        raise ConfigError("--max-batches must be at least 1")
    meta = load_checkpoint(args.checkpoint) if args.checkpoint else {}
    name, settings = _settings(args, meta)
    task = get_task(name, settings)
    result: dict[str, Any] = {"task": name, "checkpoint": str(args.checkpoint) if args.checkpoint else None,
                              "epoch": meta.get("epoch"), "options": settings.options, "seed": settings.seed}
    started = time.monotonic()
    if args.checkpoint:
        model = task.build_model()
        if "params" in meta:   # a coordinator checkpoint: parameters, and buffers when the donor shared them
            load_params(model, meta["params"], source=f"checkpoint {args.checkpoint}", buffers=meta.get("buffers"))
        else:
            load_model_state(model, meta["model"], source=f"checkpoint {args.checkpoint}")
        trained = task.evaluate(model, max_batches=args.max_batches)
        metric = _primary(name, trained)
        result.update(metric=metric, accuracy=trained[metric], metrics=trained)
        logger.info("%s of the checkpoint (epoch %s): %.4f", metric, meta.get("epoch"), trained[metric])
    if args.random_init or not args.no_baseline:
        baseline = task.evaluate(task.build_model(), max_batches=args.max_batches)
        metric = result.get("metric") or _primary(name, baseline)
        result.update(metric=metric, random_init_accuracy=baseline[metric], random_init_metrics=baseline)
        if args.random_init:
            result["accuracy"] = baseline[metric]
        logger.info("%s at random init: %.4f", metric, baseline[metric])
    result["seconds"] = round(time.monotonic() - started, 2)
    return result


def cmd_eval(args: argparse.Namespace) -> int:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    result = evaluate_checkpoint(args)
    text = json.dumps(result, indent=2)
    if args.output:
        args.output.write_text(text + "\n")
    print(text)
    return 0
