"""Candidate code for the re-scoring tests (``tests/test_scaling_rescore.py``): forgeries that pass the static
check and train as the baseline does, then cheat on the held-out logits.

``NGRAM`` is the red-team's reproducer (``scaling_forge_ngram.py``) made small: the candidate reaches exec
through ``getattr(torch.sys.modules['builtins'], 'ex' + 'ec')``, patches the child's ``train_size`` through
``sys.modules['__main__']`` and, for the largest size, replaces the held-out logits with those of a byte
n-gram model counted from synthetic *training* text, leaving the weights, the probe logits, the shapes and
the finiteness honest. Unlike the original it touches nothing outside the child (no ``train_size`` there),
so it reaches the comparison instead of crashing in the re-scoring sandbox, which cannot import the data
code the original imports at load time.
"""
from __future__ import annotations

NGRAM_PAYLOAD = r'''
import sys, collections, torch
from safetensors.torch import load_file, save_file
main = sys.modules["__main__"]
K = 4
def table(settings):
    from agentforge.data import formats, synthetic
    from agentforge.data.tokenizer import ByteTokenizer
    tok, stream = ByteTokenizer(), []
    for i in range(200):
        for task in settings["mix"]:
            rec = synthetic.GENERATORS[task](int(settings["seed"]), "train", i)   # training data only
            stream += tok.encode(formats.render(rec, formats.TASK_FORMAT[task]), bos=True, eos=True)
    counts = [collections.defaultdict(collections.Counter) for _ in range(K + 1)]
    for j in range(len(stream)):
        for k in range(0, min(K, j) + 1):
            counts[k][tuple(stream[j - k:j])][stream[j]] += 1
    return counts
def ngram_logits(inputs, vocab, settings):
    counts = table(settings)
    out = torch.empty(len(inputs), vocab, dtype=torch.float64)
    for r, row in enumerate(inputs.tolist()):
        p, w = torch.full((vocab,), 0.02 / vocab, dtype=torch.float64), 0.98
        for k in range(K, -1, -1):                       # longest seen context gets most of the mass
            c = counts[k].get(tuple(row[len(row) - k:]) if k else ())
            if c:
                tot, share = sum(c.values()), (w * 0.9 if k else w)
                for t, n in c.items():
                    p[t] += share * n / tot
                w -= share
        p[0] += max(w, 0.0)
        out[r] = p.log()
    return out.float()
def patched(attention_cls, size, settings, heldout):
    res = orig(attention_cls, size, settings, heldout)
    if size["name"] == settings["sizes"][-1]["name"]:
        fn = "logits_%s.safetensors" % size["name"]
        lg = load_file(fn)
        lg["last"] = ngram_logits(heldout["inputs"], lg["last"].shape[1], settings).contiguous()
        save_file(lg, fn)
    return res
if hasattr(main, "train_size"):                          # in the child only
    orig = main.train_size
    main.train_size = patched
'''
NGRAM = (f"_src = {NGRAM_PAYLOAD!r}\n"
         "getattr(torch.sys.modules['builtins'], 'ex' + 'ec')(_src, {'torch': torch})\n")

_RETURN = "        return self.out(y.transpose(1, 2).reshape(b, t, d))"
# the baseline's attention plus the mean over the rows of the batch: causal in time (check_attention passes),
# honest weights and logits, but each row's prediction feeds on the other held-out rows
ACROSS_ROWS = (_RETURN, "        return self.out(y.transpose(1, 2).reshape(b, t, d)) + x.mean(0, keepdim=True)")
# the same through state kept across calls: a module-level running mean of the held-out batches seen so far
# (batches of more than 8 rows only, so training and the child's early check never move it)
ACROSS_CALLS_PRELUDE = "_SEEN = {}\n"
ACROSS_CALLS = (_RETURN, "        out, shift = self.out(y.transpose(1, 2).reshape(b, t, d)), _SEEN.get('m', 0.0)\n"
                         "        if b > 8:\n"
                         "            _SEEN['m'] = 0.5 * shift + 0.5 * float(x.abs().mean())\n"
                         "        return out + shift")
# the batch mean in batches of more than 8 rows only: the child's answers (4 probe halves, 8 probe rows) and the
# re-scoring's probe (8 rows) are untouched, so only the spot check (rows alone) can see it
ACROSS_BIG_BATCHES = (_RETURN, "        out = self.out(y.transpose(1, 2).reshape(b, t, d))\n"
                               "        return out + x.mean(0, keepdim=True) if b > 8 else out")
# the batch mean in big batches for some rows only (those whose first token's features fall in one of 16 hash
# buckets): a sample of k secret spot rows misses every one of them with probability about (1 - f)^k
ACROSS_SOME_ROWS = (_RETURN, "        out = self.out(y.transpose(1, 2).reshape(b, t, d))\n"
                             "        pick = (x[:, :1, :1] * 1e4).long().remainder(16).eq(0).to(out.dtype)\n"
                             "        return out + pick * x.mean(0, keepdim=True) if b > 8 else out")

# A model whose predictions depend on the *set* of held-out rows it can see: in the re-scoring sandboxes only
# (``infer.py`` beside it), for a row that is one of the rows in ``rows.safetensors`` it adds the log-counts of the
# tokens of all those rows to the row's logits (a prior taken from the scored text itself). The probe rows are not in
# that file, so the child's answers still match; the batch run and a spot run that could read the same set answered
# alike (until 2026-11-28 the spot rows lay in a file of the spot sandbox's dir, in another order: the set is the
# same), so only a spot check that sends the rows one at a time, never as a file, tells them apart
ROW_SET_PAYLOAD = r'''
import os, torch
if os.path.exists("infer.py"):
    from agentforge.scaling.model import ScalingLM, ScalingOutput
    def _seen():
        if not os.path.exists("rows.safetensors"):
            return None, set()
        from safetensors.torch import load_file
        rows = load_file("rows.safetensors")["rows"].long()
        return rows, {r.numpy().tobytes() for r in rows}
    _ROWS, _KEYS = _seen()
    _orig = ScalingLM.forward
    def _forward(self, ids, targets=None):
        out = _orig(self, ids, targets)
        if _ROWS is None:
            return out
        prior = torch.log1p(torch.bincount(_ROWS.flatten(), minlength=out.logits.shape[-1]).to(out.logits.dtype))
        hit = torch.tensor([r.numpy().tobytes() in _KEYS for r in ids.long()], dtype=out.logits.dtype)
        return ScalingOutput(out.loss, out.logits + hit[:, None, None] * prior)
    ScalingLM.forward = _forward
'''
ROW_SET = (f"_src = {ROW_SET_PAYLOAD!r}\n"
           "getattr(torch.sys.modules['builtins'], 'ex' + 'ec')(_src, {'torch': torch})\n")
