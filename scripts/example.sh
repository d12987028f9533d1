#!/usr/bin/env bash
# The main job, end to end on a fresh machine: install what vitc needs, build it, and run the
# bundled example model (a ViT trained on handwritten digits) on one of its test images,
# checking the answer against onnxruntime's recorded output.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
cargo build --release -q -p vitc
vitc=target/release/vitc
model=tests/models/digits_vit.onnx
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

echo "== vitc inspect $model"
"$vitc" inspect "$model"
echo
echo "== vitc $model -o $out/digits_vit.so --target x86_64-avx2"
"$vitc" "$model" -o "$out/digits_vit.so" --target x86_64-avx2
echo
echo "== the C header written beside it"
grep -E "^(uint32_t|size_t|int32_t|const int64_t) |define VITC_(INPUT0|OUTPUT0)_SHAPE" "$out/digits_vit.h" || true
echo
echo "== vitc run (the compiled library, two threads)"
"$vitc" run "$out/digits_vit.so" --threads 2 --input tests/models/digits_vit.input.npy --output "$out/logits.npy"
.venv/bin/python - "$out/logits.npy" tests/models/digits_vit.output.npy <<'PY'
import sys, numpy as np
got, ref = np.load(sys.argv[1]), np.load(sys.argv[2])
err = float(np.abs(got - ref).max())
print(f"max |vitc - onnxruntime| = {err:.3g}; predicted digit {int(got.argmax())}, onnxruntime says {int(ref.argmax())}")
sys.exit(0 if err <= 1e-4 * max(1.0, float(np.abs(ref).max())) else 1)
PY
echo
echo "== vitc bench (one thread)"
"$vitc" bench "$out/digits_vit.so" --threads 1 --iters 200
