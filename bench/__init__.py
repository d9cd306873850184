"""Benchmarks of mnist-vae, each a module run from the repository root, none part of the tests.

    python -m bench.latency --run artifacts      # writes bench/results/latency.json
    python -m bench.docs                          # renders README.md and docs/ from bench/results/

Every benchmark writes its result as JSON under ``bench/results/`` (``common.write_result``) and
renders its tables from that file (its ``render``); ``docs`` puts them into the pages. What each
one measures: docs/benchmarks/index.md.
"""
