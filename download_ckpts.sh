#!/usr/bin/env bash
# Fetch the released model weights into the Hugging Face cache, each checked against the hub's
# size and SHA-256 (python -m referdino_plus.weights: the resolver a run uses).
#
#   bash download_ckpts.sh            # what the default pipeline needs: mevis_swinb, SAM 2.1 large, BERT
#   bash download_ckpts.sh all        # every ReferDINO release, every SAM 2.1 size, BERT
#   bash download_ckpts.sh sam2 referdino bert   # groups (sam3: SAM 3's tracker, gated)
#   bash download_ckpts.sh sam2.1_hiera_tiny.pt ryt_swinb.pth hf://<owner>/<repo>/<file>   # single files
#
# The cache is huggingface_hub's: HF_HOME (or HF_HUB_CACHE) says where, HF_ENDPOINT which server
# (a mirror), `hf auth login` or HF_TOKEN opens gated repositories. Every file's outcome is
# printed, then a summary; the exit status is non-zero when any file failed. Rerunning the same
# command fetches only what is missing or damaged. PYTHON picks the interpreter (default: the
# project's .venv, else python3).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")" && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
cd "$ROOT"
exec "$PYTHON" -m referdino_plus.weights "$@"
