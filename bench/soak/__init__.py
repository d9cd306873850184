"""The kill-and-resume soak of the pipeline: ``python -m bench.soak`` (see ``__main__``).

plan: the kills each stage is owed; runner: running, killing and resuming the pipeline;
compare: a resumed run folder against the uninterrupted one; report: the tables.
The protocol is docs/benchmarks/soak.md.
"""
