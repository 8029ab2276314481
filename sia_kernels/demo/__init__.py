"""``sia demo``: SIA against dense ARGS, base, random gating and Best-of-N, on the CPU, in about a minute.

One module per job:

- :mod:`.config` — :class:`DemoConfig` (every setting), the cache key, the held-out prompts;
- :mod:`.train` — the base model and the value model, trained once and kept in an atomic cache;
- :mod:`.methods` — the methods compared and running one on the held-out prompts;
- :mod:`.analysis` — the base model's entropies and the value model's quality;
- :mod:`.report` — ``results.csv``, ``pareto.png`` and the printed table;
- :mod:`.run` — :func:`run_demo`, which does all of the above in order;
- :mod:`.cli` — the ``sia demo`` flags.

The task itself is :class:`sia_kernels.tasks.BranchingTask`.
"""
from .analysis import choice_step_entropies, value_quality
from .cli import DESCRIPTION, add_demo_args, demo_main
from .config import HELDOUT_POOL, DemoConfig, heldout_prompts, with_backend
from .methods import Method, checks, run_method, run_methods
from .report import COLUMNS, format_table
from .run import run_demo
from .train import load_or_train, train_base_model, train_value_model

__all__ = ["DemoConfig", "HELDOUT_POOL", "heldout_prompts", "with_backend", "run_demo", "add_demo_args",
           "demo_main", "DESCRIPTION", "load_or_train", "train_base_model", "train_value_model", "Method",
           "run_method", "run_methods", "checks", "value_quality", "choice_step_entropies", "COLUMNS",
           "format_table"]
