"""The plan of an ablation: its variants (attention x sweep values x seed), their names and command-line
arguments, and each variant's resolved configuration, built before anything runs (a bad key or value
fails in one line) and hashed for the stale check."""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Sequence

from ..errors import UsageError

__all__ = ["Variant", "plan_variants", "sweep_key", "Resolved", "PlanCheck", "check_variants", "config_hash",
           "run_relevant_config", "CONFIG_SCHEME"]  # fmt: skip


#: the config's own spellings of the block options a sweep may name, and the short form they mean
_SWEEP_ALIASES = (
    ("model.net.init_args.attention_options.", "model.attention_options."),
    ("model.net.attention_options.", "model.attention_options."),
    ("model.net.init_args.placement", "model.placement"),
    ("model.net.placement", "model.placement"),
)


def sweep_key(key: str) -> str:
    """A swept key in the one form the plan uses: ``model.net.attention_options.reduction`` (the
    config's path) and ``model.attention_options.reduction`` mean the same block option."""
    for long, short in _SWEEP_ALIASES:
        if key == long or (long.endswith(".") and key.startswith(long)):
            return short + key[len(long) :]
    return key


@dataclass
class Variant:
    attention: str
    seed: int
    sweep: Dict[str, str] = field(default_factory=dict)
    #: further arguments of this variant's runs (e.g. its backbone from a classification ablation)
    extra_args: List[str] = field(default_factory=list)

    @property
    def group(self) -> str:
        """The variant without its seed: what the report averages over seeds."""
        keys = _short_keys(self.sweep)
        return " ".join([self.attention] + [f"{keys[k]}={v}" for k, v in sorted(self.sweep.items())])

    @property
    def name(self) -> str:
        """Folder and record name: readable, and never shared by two variants (a value's characters
        outside ``[A-Za-z0-9._+=-]`` are percent-encoded, so ``data/digits`` is ``data%2Fdigits``,
        not ``data-digits``; a swept key is shortened to its last part only where that is unique)."""
        keys = _short_keys(self.sweep)
        parts = [_safe(self.attention)] + [f"{keys[k]}-{_safe(v)}" for k, v in sorted(self.sweep.items())]
        return "_".join(parts) + f"_seed{self.seed}"

    def cli_args(self, attention_option_keys: Sequence[str]) -> List[str]:
        """The arguments that make this variant out of the base config.

        The user's keys (model.placement, model.attention_options.X) name the network's options;
        they are set together as one JSON merge into ``model.net`` (null resets the placement to
        the block's default and the options to none: jsonargparse turns a nested null into "None").
        """
        options = {
            k.split(".", 2)[2]: _yaml_scalar(v)
            for k, v in self.sweep.items()
            if k.startswith("model.attention_options.") and k.split(".", 2)[2] in attention_option_keys
        }
        placement = _yaml_scalar(self.sweep["model.placement"]) if "model.placement" in self.sweep else None
        net = {"attention": self.attention, "placement": placement, "attention_options": options or None}
        args = ["--model.net", json.dumps({"init_args": net}), "--seed_everything", str(self.seed)]
        for key, value in self.sweep.items():
            if key != "model.placement" and not key.startswith("model.attention_options."):
                args += [f"--{key}", value]
        return args + list(self.extra_args)


def _short_keys(sweep: Dict[str, str]) -> Dict[str, str]:
    """Each swept key by its last part (``model.attention_options.contiguity`` -> ``contiguity``),
    or whole where two keys share that part (``data.x`` and ``model.x`` stay apart)."""
    last = [k.split(".")[-1] for k in sweep]
    return {k: k.split(".")[-1] if last.count(k.split(".")[-1]) == 1 else k for k in sweep}


def _safe(text: str) -> str:
    from urllib.parse import quote

    return quote(str(text), safe="._+=-")


def _yaml_scalar(value: str) -> Any:
    import yaml

    return yaml.safe_load(value)


def _option_keys(attention: str) -> List[str]:
    """Constructor options a block accepts, so a sweep over e.g. contiguity reaches CSA only."""
    from ..models.summary import gate_option_names

    return gate_option_names(attention) or []


def plan_variants(attentions: Sequence[str], seeds: Sequence[int], sweeps: Dict[str, List[str]]) -> List[Variant]:
    """Every combination; an attention_options sweep applies only to blocks that take the option."""
    variants, seen = [], set()
    for attention in attentions:
        keys = _option_keys(attention)
        axes = {
            k: v
            for k, v in sweeps.items()
            if not k.startswith("model.attention_options.") or k.split(".", 2)[2] in keys
        }
        if attention == "none":
            axes.pop("model.placement", None)
        for values in itertools.product(*axes.values()) if axes else [()]:
            for seed in seeds:
                v = Variant(attention, seed, dict(zip(axes.keys(), values)))
                if (v.attention, v.seed, tuple(sorted(v.sweep.items()))) in seen:
                    continue  # the same variant listed twice (e.g. --attentions se,SE)
                seen.add((v.attention, v.seed, tuple(sorted(v.sweep.items()))))
                variants.append(v)
    for field_name in ("name", "group"):
        taken: Dict[str, Variant] = {}
        for v in variants:
            other = taken.setdefault(getattr(v, field_name) + ("" if field_name == "name" else f"#{v.seed}"), v)
            if other is not v:
                raise UsageError(
                    f"variants {other.attention} {other.sweep} and {v.attention} {v.sweep} would share the "
                    f"{field_name} '{getattr(v, field_name)}'; give the sweep values distinct names"
                )
    return variants


#: how ``config_hash`` is computed; records without it (or with another) predate the current scheme
CONFIG_SCHEME = 2

#: keys of a resolved config that never change what a run computes: left out of its hash (the paths
#: the runner sets per run, the config files' own names, progress display)
_RUN_NEUTRAL_KEYS = ("config", "ckpt_path", "trainer.default_root_dir", "trainer.enable_progress_bar",
                     "trainer.enable_model_summary")  # fmt: skip


def run_relevant_config(resolved: Dict[str, Any]) -> Dict[str, Any]:
    """A resolved config (plain values) without the keys that do not change a run."""
    import copy

    config = copy.deepcopy(resolved)
    for key in _RUN_NEUTRAL_KEYS:
        *parents, last = key.split(".")
        node: Any = config
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return config


def config_hash(config: Dict[str, Any]) -> str:
    """Hash of a variant's resolved configuration (`csa_lightning.ablate.plan.run_relevant_config`): every value the run
    is built from, whichever file, include or argument set it; comments and key order do not count."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def attach_backbones(variants: Sequence[Variant], runs: Path) -> None:
    """Give each variant the classification run of the same attention and seed as its backbone
    (``--model.backbone_weights RUN_FOLDER``: its newest checkpoint); one line lists what is missing."""
    from ..run_folder import AblationFolder, newest_checkpoint

    folder = AblationFolder(runs).runs if AblationFolder(runs).runs.is_dir() else runs
    missing = []
    for v in variants:
        run = folder / f"{v.attention}_seed{v.seed}"
        if newest_checkpoint(str(run)) is None:
            missing.append(run.name)
        v.extra_args = ["--model.backbone_weights", str(run)]
    if missing:
        raise UsageError(
            f"--backbone-runs {runs}: no checkpoint for {', '.join(missing[:4])}"
            f"{' ...' if len(missing) > 4 else ''}; run the classification ablation with the same attentions "
            "and seeds first (python -m csa_lightning.ablate --config configs/demo/digits_csa.yaml ...)"
        )


def check_sweep_keys(sweeps: Dict[str, List[str]], attentions: Sequence[str]) -> None:
    """A sweep over an option no planned block takes would be silently dropped: refuse it."""
    import difflib

    takes = {a: _option_keys(a) for a in attentions}
    known = sorted({k for keys in takes.values() for k in keys})
    for key in sweeps:
        if key.startswith("model.attention_options."):
            option = key.split(".", 2)[2]
            if option not in known:
                close = difflib.get_close_matches(option, known, n=1)
                hint = f"did you mean '{close[0]}'? " if close else ""
                raise UsageError(
                    f"--sweep {key}: no block of {', '.join(attentions)} takes an option '{option}'; "
                    f"{hint}options: {', '.join(known) or 'none'}"
                )


@dataclass
class Resolved:
    """A variant's resolved configuration (without run-neutral keys), its hash, and the provenance
    of the code it is built from (`csa_lightning.provenance.code_provenance`)."""

    config: Dict[str, Any]
    hash: str
    code: Dict[str, Any]


#: what a variant is built with for its check, whatever its job will have: the plan is checked on the
#: machine that submits it (a login node without GPUs), while the job's own values (parsed, not built)
#: are what its resolved configuration and hash record
CHECK_HARDWARE = ("--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.num_nodes", "1",
                  "--trainer.strategy", "auto", "--trainer.precision", "32-true")  # fmt: skip


@dataclass
class PlanCheck:
    """What checking a plan found: each variant's resolved configuration, and one line per variant
    that does not build (``variant <name>: <what is wrong>``)."""

    resolved: Dict[str, Resolved]
    errors: List[str]


def check_variants(base_config: str, variants: Sequence[Variant], extra: Sequence[str]) -> PlanCheck:
    """Build every variant's config and network (on the meta device and the CPU: no memory, no data
    read, no GPU needed) so that a bad key or value is found before any run trains; returns each
    variant's resolved configuration (what the stale check compares) and the errors, as values."""
    import contextlib
    import io
    import tempfile

    import torch

    from ..cli import build_cli, input_error_line, input_errors, repeated_option
    from ..config_diff import comparable
    from ..provenance import code_provenance, named_files, run_classes

    resolved, errors = {}, []
    with tempfile.TemporaryDirectory() as scratch:
        for variant in variants:
            args = [
                "--config", base_config, *variant.cli_args(_option_keys(variant.attention)), *extra,
                "--trainer.default_root_dir", scratch,
            ]  # fmt: skip
            repeated = repeated_option(args)  # what the training's own command line would refuse
            if repeated:
                errors.append(f"variant {variant.name}: {repeated}")
                continue
            try:
                with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
                    with torch.device("meta"):
                        cli = build_cli([*args, *CHECK_HARDWARE], run=False)
                    job_config = cli.parser.parse_args(args)  # the job's own trainer values: parsed, not built
            except input_errors() as err:
                errors.append(f"variant {variant.name}: {input_error_line(err)}")
                continue
            config = run_relevant_config(comparable(job_config))
            code = code_provenance(run_classes(cli.model, cli.datamodule, getattr(cli.trainer, "callbacks", [])))
            code["named_files"] = named_files(config.get("model"))  # weights and teachers, by content
            resolved[variant.name] = Resolved(config, config_hash(config), code)
    return PlanCheck(resolved, errors)
