#!/usr/bin/env bash
# Create .venv-peers: a venv with the real SAELens and sparsify libraries, kept apart from our own
# .venv so their many dependencies never leak into the project. check_formats.py runs inside it.
#
# torch goes in first, pinned, because an unpinned torch would pull a multi-GB CUDA build; every
# later install is constrained to that same torch. Re-running is cheap: a marker file records
# what was installed, and nothing is reinstalled while it matches.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${PEERS_VENV:-$ROOT/.venv-peers}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="2.13.0"
SAELENS_VERSION="6.54.12"
SPARSIFY_VERSION="1.3.3"
WANT="torch==$TORCH_VERSION sae-lens==$SAELENS_VERSION eai-sparsify==$SPARSIFY_VERSION"
MARKER="$VENV/.peers-installed"

if [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$WANT" ]; then
  echo "peers: $VENV is ready ($WANT)"
  exit 0
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip_install() {
  # This machine's pip config names local indexes that may be absent; their warnings are noise.
  "$VENV/bin/python" -m pip install --quiet "$@" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
echo "torch==$TORCH_VERSION" >"$CONSTRAINTS"

echo "peers: installing torch==$TORCH_VERSION into $VENV"
pip_install "torch==$TORCH_VERSION"
echo "peers: installing sae-lens==$SAELENS_VERSION and eai-sparsify==$SPARSIFY_VERSION"
pip_install -c "$CONSTRAINTS" "sae-lens==$SAELENS_VERSION" "eai-sparsify==$SPARSIFY_VERSION"
# Our own package's runtime needs for `sae.formats`, so check_formats.py can import it from the
# working tree (PYTHONPATH) in this same venv as well as through the project's .venv.
pip_install -c "$CONSTRAINTS" safetensors numpy

"$VENV/bin/python" - <<'EOF'
import sae_lens, sparsify, torch
print(f"peers: torch {torch.__version__}, sae_lens {sae_lens.__version__}, sparsify imports")
EOF
echo "$WANT" >"$MARKER"
