"""Metadata lives in setup.cfg. This file lets Beam runners ship the package to workers
(--setup_file=./setup.py), puts configs/ into installs as jamdata/configs (so `jamdata config show
demo` and the stages find the bundled configs without a checkout), and declares the text packer's
C extension, which is optional: without a compiler the install still succeeds and
jamdata.loader.textfill falls back to Python."""
from setuptools import Extension, find_packages, setup

PACKAGES = find_packages(include=["jamdata*", "jamtrain*", "pipelines*", "schemas*"])

setup(packages=[*PACKAGES, "jamdata.configs"], package_dir={"jamdata.configs": "configs"},
      ext_modules=[Extension("jamdata.loader._textfill", ["jamdata/loader/_textfill.c"],
                             extra_compile_args=["-O3"], optional=True)])
