"""Model merging: tensor-level techniques (Linear, SLERP, TIES, DARE), layer-level ones (FrankenMerge,
DFS), the 8 technique combos, merge recipes, and the evolutionary search over them. Pure compute: no
Hydra, W&B or files here."""
