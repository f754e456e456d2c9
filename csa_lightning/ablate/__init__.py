"""Fair ablations: every (attention, sweep values, seed) variant of one base config, then a report.

    python -m csa_lightning.ablate --config configs/demo/digits_csa.yaml \\
        --attentions none,se,cbam,eca,gct,csa --seeds 0,1,2 --out runs/ablation-digits \\
        [--sweep model.placement=stage_end,every_block] [--sweep model.attention_options.contiguity=l2,hybrid] \\
        [--parallel 4] [--any.other cli --arguments passed to every run]
    python -m csa_lightning.ablate ... --executor slurm --slurm configs/cluster/slurm.yaml \\
        [--slurm.partition gpu] [--wait]
    python -m csa_lightning.ablate ... --status | --cancel

Every variant runs ``cli.py fit`` on the base config, changing only the attention (whose
``placement`` and ``attention_options`` reset to the new block's defaults unless a sweep sets
them), the seed and the swept keys; every other argument after the known ones goes to every run.
Each run trains under ``OUT/runs/<variant>/``, started by an executor (`csa_lightning.ablate.executors`): ``local``
(a process here; ``--parallel N`` runs N at once, each on its own GPU when there are GPUs) or
``slurm`` (a job each, through submitit: `csa_lightning.ablate.executors.slurm`).

Each finished run writes its record into its folder; the runner merges them into ``OUT/results.json``
(rewritten atomically, by the runner alone): the resolved
configuration (every value the run is built from, whichever file, include or argument set it) and its hash,
attention, options, seed, final and best validation metrics, params, GMAC, train and inference
images/s, wall time, checkpoint path, git commit, and the provenance of the code it is built from
(`csa_lightning.provenance`: package, version, commit and a hash per source file of every class
the config names, a user's own blocks included). Killed and restarted with the same command, the
runner skips finished variants, resumes an interrupted one from its ``last.ckpt``, and neither
loses nor duplicates a record. A variant whose resolved configuration changed since it ran (a value
in an included file, a new default after a Lightning or jsonargparse upgrade) is refused in one
line naming what changed; so is one whose code changed (a block's source, this repository's or a
plugin's, naming the changed files; comments and files the run does not use do not count).
``--rerun`` trains it again, ``--keep-stale`` keeps its result. Records written before either scheme
(hashes of the base file's text; no code recorded) count as changed.
``OUT/report.md``, ``report.csv`` and ``report.png`` summarise
the finished variants (mean and std over seeds) after every run.

One file per concern: `csa_lightning.ablate.plan` (variants, their arguments and resolved configurations),
`csa_lightning.ablate.job` (starting a training), `csa_lightning.ablate.records` (run folders, records, the stale
check), `csa_lightning.ablate.report`, `csa_lightning.ablate.executors` and `csa_lightning.ablate.runner` (the command
line).
"""

from .plan import Variant, plan_variants
from .records import load_results
from .report import summarise, write_report
from .runner import main

__all__ = ["Variant", "plan_variants", "load_results", "summarise", "write_report", "main"]
