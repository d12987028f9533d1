#!/usr/bin/env bash
# The test command: install what vitc needs, then run the whole suite. Tests that need the
# shared model set find it through VITC_MODELS (default ../shared/models) and say they were
# skipped when it is missing.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
export VITC_MODELS="${VITC_MODELS:-$root/../shared/models}"
export INSTA_UPDATE="${INSTA_UPDATE:-no}"
cargo test --workspace "$@"
