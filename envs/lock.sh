#!/usr/bin/env bash
# Refreshes the lock files envs/lock/cpu.txt and envs/lock/cuda.txt from pyproject.toml, with hashes,
# for Linux x86-64 and Python 3.11. Run it after changing a pin in pyproject.toml (and envs/ketchup.yaml)
# and commit the lock files with that change (docs/environment.md).
#
#   bash envs/lock.sh
#
#   cpu.txt   the dependencies and the test extra, CPU torch (2.13.0+cpu): README, CI, laptops
#   cuda.txt  the dependencies, PyPI's Linux torch (built with CUDA): GPU nodes, the container image
#
# The CPU torch wheel is on PyTorch's CPU index, not on PyPI. It is taken from that index, or from the
# --find-links location (a folder or a page of links) that KETCHUP_TORCH_CPU_WHEELS names.
# KETCHUP_TORCH_CUDA_BACKEND=cu128 (or another of uv's --torch-backend values) takes the CUDA lock's
# torch from that PyTorch index instead of PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.9  # the locks' resolver; another version may resolve differently
if ! uv --version 2>/dev/null | grep -qx "uv $UV_VERSION.*"; then
    echo "envs/lock.sh: needs uv $UV_VERSION on PATH (pip install uv==$UV_VERSION)" >&2
    exit 1
fi

# No index or find-links location goes into the files: they name what to install, not where from.
common=(pyproject.toml --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28
        --custom-compile-command "bash envs/lock.sh" --quiet)

if [ -n "${KETCHUP_TORCH_CPU_WHEELS:-}" ]; then
    cpu_torch=(--find-links "$KETCHUP_TORCH_CPU_WHEELS")
else
    cpu_torch=(--torch-backend cpu)
fi
uv pip compile "${common[@]}" --extra test "${cpu_torch[@]}" -o envs/lock/cpu.txt
if ! grep -q '^torch==[^ ]*+cpu ' envs/lock/cpu.txt; then
    echo "envs/lock.sh: envs/lock/cpu.txt did not get a CPU build of torch (see KETCHUP_TORCH_CPU_WHEELS above)" >&2
    exit 1
fi

cuda_torch=()
if [ -n "${KETCHUP_TORCH_CUDA_BACKEND:-}" ]; then
    cuda_torch=(--torch-backend "$KETCHUP_TORCH_CUDA_BACKEND")
fi
uv pip compile "${common[@]}" "${cuda_torch[@]}" -o envs/lock/cuda.txt
echo "envs/lock/cpu.txt: $(grep -c '^[a-z0-9]' envs/lock/cpu.txt) packages; envs/lock/cuda.txt: $(grep -c '^[a-z0-9]' envs/lock/cuda.txt) packages"
