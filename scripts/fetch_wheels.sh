#!/usr/bin/env bash
# Fill .gpu/ on a CPU machine with what scripts/gpu_check.sh needs on a fresh GPU machine
# that has PyTorch and cannot reach a package index: the wheels of our dependencies that
# such a machine may lack, and the WikiText-2 splits the training stages read.
#
#   bash scripts/fetch_wheels.sh [FOLDER]      # default .gpu (kept out of git)
#
# Wheels at the versions installed here (the ones the tests pass with), for the GPU
# machine's Python, GPU_PYTHON (default 3.12, the device tool's H200 image), on Linux
# x86-64; all four are pure Python today:
#   hydra-core, omegaconf, antlr4-python3-runtime   the config (absent from the GPU image)
#   transformers                                    the bench's contender (the image has
#                                                   one; carried in case it does not)
# gpu_check.sh installs only those the machine lacks. torch, numpy, tqdm, PyYAML and
# tensorboard come with the GPU image (/work/.library/device/KINDS.md lists it).
# Override the source of the splits with WIKITEXT=DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-.gpu}
wikitext=${WIKITEXT:-../shared/data/wikitext-2}
python=${PYTHON:-python3}
target=(--python-version "${GPU_PYTHON:-3.12}" --implementation cp
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64)

version() {
    "$python" -c "from importlib.metadata import version; print(version('$1'))" 2>/dev/null ||
        { echo "fetch_wheels: $1 is not installed here; pip install -e '.[dev]' first" >&2; exit 2; }
}

mkdir -p "$dest/wheels" "$dest/wikitext-2"
rm -f "$dest"/wheels/*.whl  # one version of each: two would stop the install
for name in hydra-core omegaconf transformers; do
    spec="$name==$(version "$name")"
    "$python" -m pip download -q --no-deps --only-binary=:all: "${target[@]}" \
        -d "$dest/wheels" "$spec"
done
# antlr4-python3-runtime 4.9.3 (what omegaconf pins) is published as source only: build
# its wheel here; it is pure Python, so it installs on any interpreter there.
"$python" -m pip wheel -q --no-deps -w "$dest/wheels" \
    "antlr4-python3-runtime==$(version antlr4-python3-runtime)"
install -m 0644 "$wikitext"/wiki.valid.tokens "$wikitext"/wiki.test.tokens "$dest/wikitext-2/"

# Keep the folder out of git (the device tool carries ignored paths named in `carry`).
case "$(cd "$dest" && pwd)" in
"$(pwd)"/*)
    exclude=$(git rev-parse --git-path info/exclude)
    entry="/$(realpath --relative-to=. "$dest")/"
    grep -qxF "$entry" "$exclude" 2>/dev/null || echo "$entry" >>"$exclude"
    ;;
esac
ls -l "$dest/wheels" "$dest/wikitext-2"
du -sh "$dest"
