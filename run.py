#!/usr/bin/env python
"""Entry point: ``python run.py [CONFIG.yaml] [dotted.key=value ...] [--dry-run]``; see mad/cli.py."""
import sys

from mad.cli import program

if __name__ == "__main__":
    sys.exit(program())
