"""Showing what was recorded: the sinks (:mod:`.sink` interface and guard, :mod:`.local` files, :mod:`.wandb`,
:mod:`.console`), the figures (:mod:`.figures`) and HTML building blocks (:mod:`.html`) shared by the run report
(:mod:`.report`) and the ablation comparison. Imported piecemeal: matplotlib and wandb load only where needed."""
