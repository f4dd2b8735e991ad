"""Metadata lives in setup.cfg; this file only declares the text packer's C extension. It is
optional: without a compiler the install still succeeds and jamdata.loader.textfill uses numpy."""
from setuptools import Extension, setup

setup(ext_modules=[Extension("jamdata.loader._textfill", ["jamdata/loader/_textfill.c"],
                             extra_compile_args=["-O3"], optional=True)])
