"""Phase 3 compute: prompt baking (Bhargava et al. 2024) and Quiet-STaR thoughts (Zelikman et al. 2024).

Pure torch code over a ``CognateModel``; the phase (``agentforge.phases.quietstar``) wires it to the
config, the files and the trackers.
"""
