"""Sub-commands of `jamtrain`; every module here defines `register(subparsers)`."""
