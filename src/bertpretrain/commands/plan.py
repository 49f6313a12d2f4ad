"""`bertpretrain plan`: the memory a training config needs on one device, printed as a
table, without training. The plan itself is bertpretrain.plan's, the one `train` takes.

    bertpretrain plan model=large data.max_len=512 trainer.batch_size=32 --device-memory 80GB

Two inputs are unknown before the data is built: the vocabulary (--vocab-size, default
BERT's 30522) and the real-token fill (--fill, default 1.0: the worst case).
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch

from bertpretrain.commands.precheck import search_path
from bertpretrain.config import Config
from bertpretrain.config_checks import parse_size as config_parse_size
from bertpretrain.config_compose import compose
from bertpretrain.config_ranges import RANGES, Range, check_value
from bertpretrain.device import resolve_precision
from bertpretrain.errors import ArgumentParser, UserError
from bertpretrain.memory import plan
from bertpretrain.memory.activations import fused_attention
from bertpretrain.memory.budget import device_type, format_size, memory_budget
from bertpretrain.memory.fit import choose_accum, format_count
from bertpretrain.memory.plan import DEFAULT_VOCAB, MARGIN, Plan, Workload
from bertpretrain.model.attention import why_not_varlen


def main(argv: list[str]) -> None:
    args = _parser().parse_args(argv)
    if not 0 < args.fill <= 1:
        raise UserError(f"--fill {args.fill} must be in (0, 1], e.g. --fill 0.72")
    check_value("--vocab-size", args.vocab_size, RANGES["tokenizer.vocab_size"])
    overrides = [*args.overrides, *([search_path(args.config_dir)] if args.config_dir else [])]
    cfg = compose(overrides)[0]
    batch = cfg.trainer.batch_size
    ranks = Range(1, batch, f"each rank needs a sequence of trainer.batch_size={batch}")
    check_value("--ranks", args.ranks, ranks)
    cfg, vocab_size = _with_init(cfg, args.vocab_size)
    work = Workload(cfg.model, cfg.trainer, cfg.speed, cfg.optim, cfg.data.max_len)
    device = device_type(cfg.trainer.device)
    budget, source = _budget(cfg, device, args.device_memory)
    refusal = None
    try:
        accum, chosen = choose_accum(
            work, vocab_size, args.fill, device, budget, source, args.ranks
        )
    except UserError as refused:  # what train would refuse with, printed after the table
        accum = plan.configured_accum(cfg.trainer)
        chosen = plan.make_plan(work, vocab_size, args.fill, device, budget, args.ranks, accum)
        refusal = str(refused)
    print(format_plan(cfg, chosen, accum, vocab_size, args.fill, args.ranks, source, refusal))


def _with_init(cfg: Config, given: int | None) -> tuple[Config, int]:
    """The config with init='s architecture as model.*, and the vocabulary to plan for:
    --vocab-size, else init='s, tokenizer.vocab_size's or BERT's."""
    if cfg.init:  # that model's architecture replaces model.*, and its vocabulary is known
        from bertpretrain.init_from import adopt

        adopted = adopt(cfg.init, cfg.model, cfg.data.max_len)
        cfg = replace(cfg, model=adopted.model)
        return cfg, given or adopted.architecture.vocab_size
    return cfg, given or cfg.tokenizer.vocab_size or DEFAULT_VOCAB


def _budget(cfg: Config, device: str, device_memory: str | None) -> tuple[int, str]:
    """The memory to plan for and where its figure comes from, as for `train`."""
    if device_memory is not None:
        return parse_size(device_memory), f"--device-memory {device_memory}"
    name = cfg.trainer.device
    return memory_budget(cfg.trainer, torch.device(device if name == "auto" else name))


def parse_size(text: str) -> int:
    """Bytes from `80GB` (decimal), `80GiB` or `80G` (binary), or a plain number of bytes."""
    return config_parse_size(text, "--device-memory ")


def format_plan(
    cfg: Config,
    chosen: Plan,
    accum: int,
    vocab_size: int,
    fill: float,
    ranks: int,
    source: str,
    refusal: str | None = None,
) -> str:
    """The plan as the command prints it: `accum` micro-steps as train would take them,
    `source` where the memory figure comes from, `refusal` train's one line if it would
    not start."""
    return "\n".join(
        [
            *_settings(cfg, chosen, accum, vocab_size, fill, ranks, source),
            "",
            *_table(chosen),
            "",
            *_verdict(chosen, refusal),
        ]
    )


def _precision(setting: str, device: str) -> str:
    resolved = resolve_precision(setting, device)
    return setting if resolved == setting else f"{setting} ({resolved} on {device})"


def _settings(
    cfg: Config, chosen: Plan, accum: int, vocab_size: int, fill: float, ranks: int, source: str
) -> list[str]:
    """What the plan is for: the model, the micro-batch, the fill and the device."""
    model, trainer = cfg.model, cfg.trainer
    split = f"trainer.batch_size={trainer.batch_size} / {accum} micro-steps "
    split += f"(trainer.grad_accum={trainer.grad_accum})"
    split += f" / {ranks} ranks" if ranks > 1 else ""
    vocab = f"vocabulary {vocab_size}"
    if vocab_size == cfg.tokenizer.vocab_size:
        vocab += " (tokenizer.vocab_size)"
    elif vocab_size == DEFAULT_VOCAB:
        vocab += " (BERT's; WikiText-2's word vocabulary is known once the data is built: --vocab-size N)"
    precision = resolve_precision(cfg.speed.precision, chosen.device)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    head_dim = model.hidden_size // model.num_heads
    if why_not_varlen(torch.device(chosen.device), dtype, head_dim) is None:
        attention = "variable-length attention kernel on the packed tokens (nothing padded)"
    elif fused_attention(chosen.device, model.dropout):
        attention = "fused attention kernel (no (B, heads, L, L) scores)"
    else:
        attention = (
            "attention materialises its scores, (heads, L, L) a sequence, L its length rounded "
            "up (on CUDA a fused kernel does not: "
            "plan for a GPU with trainer.device=cuda)"
        )
    memory = format_size(chosen.device_memory)
    return [
        f"model={model.name}: {model.num_layers} layers, hidden {model.hidden_size}, "
        f"{model.num_heads} heads, FFN {model.ffn_size}; data.max_len={cfg.data.max_len}; "
        f"speed.precision={_precision(cfg.speed.precision, chosen.device)}",
        f"parameters: {chosen.params / 1e6:.1f}M with {vocab}",
        f"micro-batch: {chosen.micro_batch} sequences ({split}); gradient checkpointing "
        f"{'on' if chosen.checkpointing else 'off'}",
        f"real-token fill: {fill:.2f} (--fill; 1.0 = no padding, the worst case; WikiText-2 "
        "batches are about 0.72 at max_len 64)",
        f"device: {chosen.device} (trainer.device={trainer.device}), {memory} ({source}); "
        f"{attention}",
    ]


def _table(chosen: Plan) -> list[str]:
    """Each part's bytes, the activations' named parts indented under their sum."""
    rows = [
        ("weights (fp32)", chosen.weights),
        ("gradients (fp32)", chosen.gradients),
        ("optimizer state (Adam: 2 x fp32)", chosen.optimizer),
        (f"activations for a micro-batch of {chosen.micro_batch}", chosen.activation_total),
        *[(f"  {name}", size) for name, size in chosen.activations.items()],
    ]
    if chosen.slack:
        rows.append(("the heap's slack between steps (CPU, rough)", chosen.slack))
    if chosen.step_scratch > chosen.activation_total + chosen.slack:
        rows.append(("optimizer.step() scratch (instead of activations)", chosen.step_scratch))
    rows.append(("runtime overhead (rough)", chosen.overhead))
    rows.append(("total", chosen.total))
    return [f"  {name:<52} {format_size(size):>12}" for name, size in rows]


def _verdict(chosen: Plan, refusal: str | None) -> list[str]:
    """Whether it fits (or train's refusal), and the largest micro-batches that do."""
    usage = (
        f"{format_size(chosen.total)} of {format_size(chosen.device_memory)} "
        f"({100 * chosen.total / chosen.device_memory:.0f}%)"
    )
    return [
        f"does NOT fit: {refusal}" if refusal else f"fits: {usage}; a plan may fill {MARGIN:.0%}",
        f"largest micro-batch that fits: {format_count(chosen.largest)} without gradient "
        f"checkpointing, {format_count(chosen.largest_checkpointed)} with "
        "speed.gradient_checkpointing=true",
    ]


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="bertpretrain plan",
        description="The memory a training config needs on one device, without training: "
        "parameters, weights, gradients, Adam's state, activations per micro-batch, whether "
        "it fits and the largest micro-batch that does.",
        epilog="example: bertpretrain plan model=large data.max_len=512 trainer.batch_size=32 "
        "speed.precision=bf16 --device-memory 80GB",
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="Hydra overrides, as for train"
    )
    parser.add_argument(
        "--config-dir", metavar="DIR", help="a folder of your own configs, as for train"
    )
    parser.add_argument(
        "--device-memory",
        metavar="SIZE",
        help="the device's memory: 80GB (decimal), 80GiB or 80G (binary), or bytes; "
        "default: the GPU's of trainer.device, or this machine's RAM on the CPU",
    )
    parser.add_argument(
        "--vocab-size",
        type=int,
        metavar="N",
        help="vocabulary size (default: tokenizer.vocab_size for tokenizer=wordpiece, else "
        f"{DEFAULT_VOCAB}, BERT's; the training log prints a word vocabulary's once the data "
        "is built)",
    )
    parser.add_argument(
        "--fill",
        type=float,
        default=1.0,
        metavar="F",
        help="fraction of positions that are real tokens, not padding (default: 1.0, the "
        "worst case; WikiText-2 is about 0.72 at data.max_len=64)",
    )
    parser.add_argument(
        "--ranks",
        type=int,
        default=1,
        metavar="N",
        help="data-parallel processes (torchrun) sharing trainer.batch_size (default: 1)",
    )
    return parser
