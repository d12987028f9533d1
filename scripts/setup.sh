#!/usr/bin/env bash
# Installs everything vitc needs on a fresh Debian 12 machine. Idempotent: a second run only
# checks. Debian packages (LLVM/MLIR 22, the aarch64 cross sysroot, qemu) and a Python venv
# at .venv with the reference runtimes (numpy, onnx, onnxruntime, openvino).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

pkgs=(
  llvm-22 llvm-22-dev libmlir-22-dev mlir-22-tools clang-22 lld-22 libpolly-22-dev
  zlib1g-dev libzstd-dev libxml2-dev libffi-dev
  qemu-user libc6-dev-arm64-cross libgcc-12-dev-arm64-cross
  python3-venv valgrind file
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get update -q
  $sudo_cmd apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/cargo" ]; then
  echo "setup: cargo not found; install Rust with rustup first" >&2
  exit 1
fi

venv="$root/.venv"
py_reqs="$root/scripts/requirements.txt"
stamp="$venv/.vitc-requirements"
if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating $venv"
  python3 -m venv "$venv"
fi
if ! cmp -s "$py_reqs" "$stamp"; then
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q -r "$py_reqs"
  cp "$py_reqs" "$stamp"
fi
echo "setup: ok"
