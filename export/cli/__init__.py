"""The subcommands of ``python -m export``, one module each.

Every module here declares ``NAME``, ``add_parser(sub, parents)`` (its arguments) and
``run(args) -> int`` (its exit status); ``export.__main__`` builds the parser from ``COMMANDS``
and runs the one asked for. ``common`` holds the arguments and helpers they share.
"""

from __future__ import annotations

from export.cli import (
    denoise,
    edge,
    encode,
    evaluate,
    explorer,
    generate,
    info,
    score,
    verify,
)

COMMANDS = (info, generate, encode, score, denoise, verify, explorer, evaluate, edge)
