#!/usr/bin/env bash
# Build KenLM's `lmplz` and `build_binary` (n-gram model training, for `jamdata quality lm`): no
# package ships them, but the `kenlm` source distribution on PyPI holds their sources.
#   scripts/build_lmplz.sh [DEST_DIR]    # default: the virtual environment's bin/ (.venv/bin)
# Needs cmake, a C++ compiler and Boost (program_options, system, thread, test), zlib, bzip2, xz;
# as root on Debian/Ubuntu they are installed here. About 5 minutes on 2 cores.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-$repo/.venv/bin}
py=${PYTHON:-$repo/.venv/bin/python}
version=${KENLM_VERSION:-0.3.0}
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q cmake g++ libboost-program-options-dev \
    libboost-system-dev libboost-thread-dev libboost-test-dev zlib1g-dev libbz2-dev liblzma-dev >/dev/null
fi
work=$(mktemp -d /tmp/kenlm-build.XXXXXX)
trap 'rm -rf "$work"' EXIT
"$py" -m pip download -q "kenlm==$version" --no-deps --no-binary :all: --no-build-isolation -d "$work"
tar xzf "$work/kenlm-$version.tar.gz" -C "$work"
mkdir -p "$work/kenlm-$version/build"
cd "$work/kenlm-$version/build"
cmake .. -DCMAKE_BUILD_TYPE=Release -DKENLM_MAX_ORDER=6 >/dev/null
make -j"$(nproc)" lmplz build_binary >/dev/null
mkdir -p "$dest"
cp bin/lmplz bin/build_binary "$dest/"
echo "lmplz and build_binary in $dest"
