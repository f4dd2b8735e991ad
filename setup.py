"""Shim so that Beam runners can ship this package to workers with --setup_file=./setup.py."""
from setuptools import setup

setup()
