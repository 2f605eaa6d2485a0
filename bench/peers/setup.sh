#!/usr/bin/env bash
# Create .venv-peers: a venv with the real SAELens and sparsify libraries, kept apart from our own
# .venv so their many dependencies never leak into the project. check_formats.py runs inside it.
#
# With --dashboard (or PEERS_DASHBOARD=1) it also installs SAEDashboard, for saedashboard.py,
# with the TransformerLens and transformers releases it accepts. That is opt-in: SAEDashboard
# caps transformer-lens below 3 and transformers below 4.57, so pip moves both (and numpy,
# safetensors, datasets, pyarrow) back from what sae-lens alone gets. check_formats.py passes
# either way; without the flag nothing changes.
#
# torch goes in first, pinned, because an unpinned torch would pull a multi-GB CUDA build; every
# later install is constrained to that same torch. Re-running is cheap: marker files record
# what was installed, and nothing is reinstalled while they match.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${PEERS_VENV:-$ROOT/.venv-peers}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="2.13.0"
SAELENS_VERSION="6.54.12"
SPARSIFY_VERSION="1.3.3"
DICTIONARY_LEARNING_VERSION="0.1.0"
DASHBOARD_VERSION="0.8.0"
TRANSFORMER_LENS_VERSION="2.17.0"  # the newest below 3.0, SAEDashboard 0.8.0's cap
TRANSFORMERS_VERSION="4.56.2"      # the newest below 4.57, SAEDashboard 0.8.0's cap
# transformer-lens 2.x holds numpy below 2 on Python 3.11; pyarrow 26 refuses numpy 1 at import.
PYARROW_VERSION="25.0.1"
WANT="torch==$TORCH_VERSION sae-lens==$SAELENS_VERSION eai-sparsify==$SPARSIFY_VERSION"
WANT="$WANT dictionary-learning==$DICTIONARY_LEARNING_VERSION"
DASHBOARD_WANT="sae-dashboard==$DASHBOARD_VERSION transformer-lens==$TRANSFORMER_LENS_VERSION"
DASHBOARD_WANT="$DASHBOARD_WANT transformers==$TRANSFORMERS_VERSION pyarrow==$PYARROW_VERSION"
MARKER="$VENV/.peers-installed"
DASHBOARD_MARKER="$VENV/.peers-dashboard-installed"

DASHBOARD="${PEERS_DASHBOARD:-0}"
for arg in "$@"; do
  case "$arg" in
    --dashboard) DASHBOARD=1 ;;
    *)
      echo "setup.sh: unknown argument '$arg' (the only one is --dashboard)" >&2
      exit 2
      ;;
  esac
done

matches() { [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; }

if matches "$MARKER" "$WANT"; then
  if [ "$DASHBOARD" != 1 ]; then
    echo "peers: $VENV is ready ($WANT)"
    exit 0
  fi
  if matches "$DASHBOARD_MARKER" "$DASHBOARD_WANT"; then
    echo "peers: $VENV is ready ($WANT $DASHBOARD_WANT)"
    exit 0
  fi
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

install_base() {
  echo "peers: installing torch==$TORCH_VERSION into $VENV"
  pip_install "torch==$TORCH_VERSION"
  echo "peers: installing sae-lens==$SAELENS_VERSION and eai-sparsify==$SPARSIFY_VERSION"
  pip_install -c "$CONSTRAINTS" "sae-lens==$SAELENS_VERSION" "eai-sparsify==$SPARSIFY_VERSION"
  # Our own package's runtime needs for `sae.formats`, so check_formats.py can import it from the
  # working tree (PYTHONPATH) in this same venv as well as through the project's .venv.
  pip_install -c "$CONSTRAINTS" safetensors numpy
  # dictionary_learning's SAE classes need torch and einops alone; its declared requirements
  # (nnsight, wandb, umap, plotly, ...) serve its training loop, which nothing here runs.
  echo "peers: installing dictionary-learning==$DICTIONARY_LEARNING_VERSION (without its extras)"
  pip_install --no-deps "dictionary-learning==$DICTIONARY_LEARNING_VERSION"
  pip_install -c "$CONSTRAINTS" einops
  "$VENV/bin/python" - <<'PY'
import sae_lens, sparsify, torch
print(f"peers: torch {torch.__version__}, sae_lens {sae_lens.__version__}, sparsify imports")
PY
  echo "$WANT" >"$MARKER"
}

install_dashboard() {
  echo "peers: installing $DASHBOARD_WANT"
  # SAEDashboard alone, then every requirement it declares but decode-clt. Only its
  # cross-layer-transcoder path imports decode-clt, which pulls torchvision and torchaudio: their
  # PyPI builds need CUDA torch (torchvision's ops fail to register on the CPU build, and
  # transformers imports torchvision whenever it is installed, so nothing would load). pip then
  # reports decode-clt as missing: that is expected.
  pip_install --no-deps "sae-dashboard==$DASHBOARD_VERSION"
  local requirements
  mapfile -t requirements < <(
    "$VENV/bin/python" -c '
from importlib.metadata import requires
for line in requires("sae-dashboard") or []:
    if not line.startswith("decode-clt") and "extra ==" not in line:
        print(line)
'
  )
  # One resolution with sae-lens and eai-sparsify named again, so pip keeps every pin at once.
  pip_install -c "$CONSTRAINTS" "sae-lens==$SAELENS_VERSION" "eai-sparsify==$SPARSIFY_VERSION" \
    "transformer-lens==$TRANSFORMER_LENS_VERSION" "transformers==$TRANSFORMERS_VERSION" \
    "pyarrow==$PYARROW_VERSION" "${requirements[@]}"
  "$VENV/bin/python" - <<'PY'
from importlib.metadata import version

import sae_dashboard.sae_vis_runner, sae_lens, sparsify, torch, transformer_lens  # noqa: F401

names = ("sae-dashboard", "transformer-lens", "transformers", "sae-lens")
print("peers: torch " + torch.__version__ + ", " + ", ".join(f"{n} {version(n)}" for n in names))
PY
  echo "$DASHBOARD_WANT" >"$DASHBOARD_MARKER"
}

if ! matches "$MARKER" "$WANT"; then
  rm -f "$DASHBOARD_MARKER" # reinstalling the base may move what the dashboard install pinned
  install_base
fi
if [ "$DASHBOARD" = 1 ]; then
  install_dashboard
fi
