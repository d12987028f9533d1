#!/usr/bin/env bash
# selftest.sh — tests the C test tools themselves, before any compiled model exists: builds
# vitc_driver.c (dynamic, static, and for aarch64 when a cross sysroot is there) and runs every
# mode against fake_model.c, a hand-written stand-in for a model (never vitc output), including
# the failure paths and runs under valgrind. Also links the runtime's static library into
# rt_pool_test.c to check vitc.h and the C pool API.
#
#   tests/c/selftest.sh            # from anywhere; needs cc, python with numpy, cargo
#   PYTHON=/path/to/python SKIP_RUNTIME=1 tests/c/selftest.sh
#
# Exits non-zero at the first failed check.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cc=${CC:-cc}
cflags="-O2 -g -Wall -Wextra -Werror -std=c11"
python=${PYTHON:-$root/.venv/bin/python}
[ -x "$python" ] || python=python3
passed=0

fail() { echo "selftest: FAIL: $*" >&2; exit 1; }

# expect STATUS REGEX CMD...: runs CMD, which must exit with STATUS and print a line matching
# REGEX on stdout (or stderr, for the error cases).
expect() {
  local want=$1 pattern=$2 got=0
  shift 2
  "$@" >"$tmp/out" 2>"$tmp/err" || got=$?
  if [ "$got" != "$want" ] || ! grep -Eq -- "$pattern" "$tmp/out" "$tmp/err"; then
    echo "--- stdout:" >&2; cat "$tmp/out" >&2
    echo "--- stderr:" >&2; cat "$tmp/err" >&2
    fail "exit $got (want $want), /$pattern/: $*"
  fi
  passed=$((passed + 1))
  local said
  said=$(head -n1 "$tmp/out")
  [ -n "$said" ] || said=$(head -n1 "$tmp/err")
  echo "ok  [exit $got] $said" | cut -c1-150
}

echo "== build"
"$cc" $cflags -pthread "$here/vitc_driver.c" -ldl -o "$tmp/driver"
fake() { # fake NAME -DFLAGS...: the stand-in as a shared library
  local name=$1
  shift
  "$cc" $cflags -shared -fPIC "$@" "$here/fake_model.c" -o "$tmp/$name.so"
}
fake n4
fake n1000 -DFAKE_N=1000
fake toy -DFAKE_PREFIX=toy
fake abi2 -DFAKE_ABI_VERSION=2
fake sloppy -DFAKE_SLOPPY_ALIGN

echo "== data"
"$python" - "$tmp" <<'EOF'
import sys
import numpy as np
d = sys.argv[1]
x = np.array([[0.5, -1.0, 2.0, 3.25]], dtype=np.float32)
np.save(f"{d}/x.npy", x)
np.save(f"{d}/y.npy", 2 * x + 1)
np.save(f"{d}/x64.npy", x.astype(np.float64))
np.save(f"{d}/y_off.npy", 2 * x + 1.01)  # off by 0.01 > 1e-4 * 7.5
with open(f"{d}/x_v2.npy", "wb") as f:
    np.lib.format.write_array(f, x, version=(2, 0))
big = np.linspace(-3, 3, 1000, dtype=np.float32).reshape(1, 1000)
np.save(f"{d}/big_x.npy", big)
np.save(f"{d}/big_y.npy", 2 * big + 1)
bx = np.random.default_rng(0).standard_normal((20, 1, 4)).astype(np.float32)
by = bx.reshape(20, 4).argmax(1).astype(np.int64)
by[:3] = (by[:3] + 1) % 4  # three wrong labels: accuracy 17/20
np.save(f"{d}/bx.npy", bx)
np.save(f"{d}/by.npy", by)
np.save(f"{d}/by32.npy", by.astype(np.int32))
np.save(f"{d}/fortran.npy", np.asfortranarray(np.ones((2, 2), np.float32)))
EOF

D="$tmp/driver"
echo "== compare"
for t in 1 2 4 0; do
  expect 0 "^max_abs_diff=0.000e\+00 tol=7.500e-04 threads=[0-9]+ OK$" "$D" "$tmp/n4.so" --input "$tmp/x.npy" --ref "$tmp/y.npy" --threads $t
done
expect 0 " OK$" "$D" "$tmp/n4.so" --input "$tmp/x64.npy" --ref "$tmp/y.npy"
expect 0 " OK$" "$D" "$tmp/n4.so" --input "$tmp/x_v2.npy" --ref "$tmp/y.npy" --rtol 0
expect 0 "threads=3 OK$" "$D" "$tmp/n1000.so" --input "$tmp/big_x.npy" --ref "$tmp/big_y.npy" --threads 3
expect 1 "^max_abs_diff=1.000e-02 .* FAIL$" "$D" "$tmp/n4.so" --input "$tmp/x.npy" --ref "$tmp/y_off.npy" --threads 2
expect 0 " OK$" "$D" "$tmp/n4.so" --input "$tmp/x.npy" --ref "$tmp/y_off.npy" --rtol 2e-3

echo "== check-args"
expect 0 "^check_args: rejected=7/7 good=3/3 threads=1 OK$" "$D" "$tmp/n4.so" --check-args
expect 0 "^check_args: rejected=7/7 good=3/3 threads=3 OK$" "$D" "$tmp/n1000.so" --check-args --threads 3 --input "$tmp/big_x.npy"
expect 1 "^check_args: rejected=5/7 .*FAIL$" "$D" "$tmp/sloppy.so" --check-args

echo "== threads-identical"
expect 0 "^threads_identical=4 runs=12 mismatches=0 failures=0 threads=1 OK$" "$D" "$tmp/n4.so" --threads-identical 4
expect 0 "^threads_identical=4 runs=40 mismatches=0 failures=0 threads=3 OK$" "$D" "$tmp/n1000.so" --threads-identical 4 --threads 3 --repeat 10

echo "== accuracy"
expect 0 "^accuracy=0.8500 \(17/20\) threads=1 OK$" "$D" "$tmp/n4.so" --accuracy "$tmp/bx.npy" "$tmp/by.npy"
expect 0 "^accuracy=0.8500 \(17/20\) threads=2 OK$" "$D" "$tmp/n4.so" --accuracy "$tmp/bx.npy" "$tmp/by32.npy" --threads 2
expect 1 "^accuracy=0.8500 \(17/20\) .*FAIL$" "$D" "$tmp/n4.so" --accuracy "$tmp/bx.npy" "$tmp/by.npy" --min-accuracy 0.9

echo "== errors"
expect 2 "no symbol vitc_abi_version" "$D" "$tmp/toy.so" --check-args
expect 0 "rejected=7/7 .*OK$" "$D" "$tmp/toy.so" --prefix toy --check-args
expect 2 "ABI version 2" "$D" "$tmp/abi2.so" --check-args
expect 2 "cannot load" "$D" "$tmp/missing.so" --check-args
expect 2 "cannot open" "$D" "$tmp/n4.so" --input "$tmp/missing.npy" --ref "$tmp/y.npy"
expect 2 "model input 0 takes 1000" "$D" "$tmp/n1000.so" --input "$tmp/x.npy" --ref "$tmp/y.npy"
expect 2 "only C-order" "$D" "$tmp/n4.so" --input "$tmp/fortran.npy" --ref "$tmp/y.npy"
expect 2 "expected an integer array" "$D" "$tmp/n4.so" --accuracy "$tmp/bx.npy" "$tmp/bx.npy"
expect 2 "nothing to compare" "$D" "$tmp/n4.so" --input "$tmp/x.npy"
expect 2 "unknown option" "$D" "$tmp/n4.so" --bogus

echo "== static build (-DVITC_STATIC)"
"$cc" $cflags -c -DFAKE_PREFIX=toy "$here/fake_model.c" -o "$tmp/toy.o"
ar rcs "$tmp/libtoy.a" "$tmp/toy.o"
"$cc" $cflags -pthread -DVITC_STATIC -DVITC_PREFIX=toy "$here/vitc_driver.c" "$tmp/libtoy.a" -o "$tmp/driver_static"
expect 0 "rejected=7/7 .*OK$" "$tmp/driver_static" --check-args --threads 2
expect 0 " OK$" "$tmp/driver_static" --input "$tmp/x.npy" --ref "$tmp/y.npy" --threads 2
expect 2 "built for prefix toy" "$tmp/driver_static" --prefix vitc --check-args

if command -v valgrind >/dev/null; then
  echo "== valgrind"
  vg="valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect,possible"
  expect 0 " OK$" $vg "$D" "$tmp/n4.so" --input "$tmp/x.npy" --ref "$tmp/y.npy" --threads 4
  expect 1 " FAIL$" $vg "$D" "$tmp/n4.so" --input "$tmp/x.npy" --ref "$tmp/y_off.npy" --threads 2
  expect 0 " OK$" $vg "$D" "$tmp/n1000.so" --check-args --threads 4
  expect 0 " OK$" $vg "$D" "$tmp/n1000.so" --threads-identical 4 --threads 2
  expect 0 " OK$" $vg "$D" "$tmp/n4.so" --accuracy "$tmp/bx.npy" "$tmp/by.npy" --threads 3
  expect 0 " OK$" $vg "$tmp/driver_static" --check-args --threads 2
else
  echo "== valgrind: not installed, skipped"
fi

if [ -z "${SKIP_RUNTIME:-}" ]; then
  echo "== runtime C API (libvitc_runtime.a + vitc.h)"
  (cd "$root" && cargo build -q -p vitc-runtime)
  lib="${CARGO_TARGET_DIR:-$root/target}/debug/libvitc_runtime.a"
  "$cc" $cflags -pthread -I"$root/runtime/include" "$here/rt_pool_test.c" "$lib" \
    -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc -o "$tmp/rt_pool_test"
  expect 0 "^rt_pool_test: OK$" "$tmp/rt_pool_test"
  if command -v valgrind >/dev/null; then
    expect 0 "^rt_pool_test: OK$" valgrind -q --error-exitcode=99 --leak-check=full "$tmp/rt_pool_test"
  fi
fi

a64_sysroot=/usr/aarch64-linux-gnu
a64_gcc=/usr/lib/gcc-cross/aarch64-linux-gnu/12
if command -v clang-22 >/dev/null && [ -d "$a64_sysroot/include" ] && [ -d "$a64_gcc" ]; then
  echo "== aarch64 (clang-22, static)"
  a64=(clang-22 --target=aarch64-linux-gnu -fuse-ld=lld --sysroot=/ -isystem "$a64_sysroot/include"
    -L"$a64_sysroot/lib" -B"$a64_gcc" -L"$a64_gcc" -Wno-unused-command-line-argument)
  "${a64[@]}" $cflags -DVITC_STATIC -DVITC_PREFIX=vitc -c "$here/vitc_driver.c" -o "$tmp/driver_a64.o"
  "${a64[@]}" $cflags -c "$here/fake_model.c" -o "$tmp/fake_a64.o"
  ar rcs "$tmp/libfake_a64.a" "$tmp/fake_a64.o"
  "${a64[@]}" -static -pthread "$tmp/driver_a64.o" "$tmp/libfake_a64.a" -o "$tmp/driver_a64"
  passed=$((passed + 1))
  echo "ok  aarch64 object and static link"
  if command -v qemu-aarch64 >/dev/null; then
    q="qemu-aarch64 $tmp/driver_a64"
    expect 0 "threads=4 OK$" $q --input "$tmp/x.npy" --ref "$tmp/y.npy" --threads 4
    expect 0 "rejected=7/7 .*OK$" $q --check-args --threads 3
    expect 0 "mismatches=0 .*OK$" $q --threads-identical 4 --threads 2
    expect 0 "^accuracy=0.8500 \(17/20\)" $q --accuracy "$tmp/bx.npy" "$tmp/by.npy" --threads 2
  fi
else
  echo "== aarch64: clang-22 or the cross sysroot missing, skipped"
fi

echo "selftest: $passed checks passed"
