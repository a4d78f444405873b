"""The scaling-law evaluator: score an attention variant by how its loss falls with model size.

Several sizes of a small transformer (``model.py``) are trained with the candidate's attention in a
separate, time- and memory-limited process (``sandbox.py``); ``fit.py`` fits
loss = a + b·ln(params) and the fitness is −b; ``evaluator.py`` ties it together behind OpenEvolve's
contract (program path in, metrics dict out) and ``cache.py`` makes a repeat free.
"""
