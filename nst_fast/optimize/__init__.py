"""One optimisation run (transfer), in one flow: options resolved once (options),
the plan of sizes that fit in memory (plan, memory), the targets of each scale
(targets), the steps (loop, steps, optim), checkpoints and resuming (checkpoint,
resume), and what a run is given and returns (result)."""
