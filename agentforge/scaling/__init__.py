"""The scaling-law evaluator: score an attention variant by how its loss falls with model size.

Several sizes of a small transformer (``model.py``) are trained with the candidate's attention by
``child.py`` inside ``agentforge.sandbox`` (bubblewrap); ``trust.py`` scores what comes back on the
trusted side (held-out loss on withheld tokens, parameter counts, causality and finiteness checks);
``fit.py`` fits loss = a + b·ln(params) and guards the fitness against sabotage; ``failures.py`` names the
ways a candidate fails; ``evaluator.py`` ties it together behind OpenEvolve's contract (program path in,
metrics dict out) and ``cache.py`` makes a repeat free.
"""
