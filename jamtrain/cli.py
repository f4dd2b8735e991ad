"""`jamtrain` command line; sub-commands live in jamtrain/commands/."""

from __future__ import annotations

import sys
from typing import Sequence

from jamdata.cli import run


def main(argv: Sequence[str] | None = None) -> int:
    return run(argv, "jamtrain", "jamtrain.commands")


if __name__ == "__main__":
    sys.exit(main())
