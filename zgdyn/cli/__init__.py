"""The command line: `zgdyn COMMAND ...` (`zgdyn --help`)."""

from .parser import build_parser, main

__all__ = ["main", "build_parser"]
