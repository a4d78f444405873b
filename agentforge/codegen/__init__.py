"""Code generation evaluated by execution (``phase=codegen``): benchmarks, an offline code corpus,
sampling with stop sequences, sandboxed execution, pass@k and the success dashboard's report."""
