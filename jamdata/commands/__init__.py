"""Sub-commands of `jamdata`; every module here defines `register(subparsers)`."""
