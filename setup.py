"""Metadata lives in setup.cfg. This file lets Beam runners ship the package to workers
(--setup_file=./setup.py) and declares the text packer's C extension, which is optional: without
a compiler the install still succeeds and jamdata.loader.textfill falls back to Python."""
from setuptools import Extension, setup

setup(ext_modules=[Extension("jamdata.loader._textfill", ["jamdata/loader/_textfill.c"],
                             extra_compile_args=["-O3"], optional=True)])
