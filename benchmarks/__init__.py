"""The benchmark suite: every agent on every task, scored against the known optimum at every grid.

    python -m benchmarks run --suite quick      # see benchmarks/README.md

``suite`` parses a suite file into runs, ``run`` runs them into ``results.json``, ``report`` and
``plots`` turn that file into ``report.md`` and PNGs, ``env_throughput`` times the batched env
against a hand-written loop of the same model.
"""
