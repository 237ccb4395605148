#!/usr/bin/env bash
# Download model weights into checkpoints/ (or $CKPT_DIR).
#
#   bash download_ckpts.sh            # what the default pipeline needs: mevis_swinb, SAM 2.1 large, BERT
#   bash download_ckpts.sh all        # every SAM 2.1 size and every ReferDINO release
#   bash download_ckpts.sh sam2 referdino bert   # groups
#   bash download_ckpts.sh sam2.1_hiera_tiny.pt ryt_swinb.pth   # single files
#
# Files are fetched to <name>.part and renamed when complete; an interrupted download resumes.
set -euo pipefail

CKPT_DIR="${CKPT_DIR:-$(cd "$(dirname "$0")" && pwd)/checkpoints}"
SAM2_URL="https://dl.fbaipublicfiles.com/segment_anything_2/092824"
REFERDINO_URL="https://huggingface.co/liangtm/referdino/resolve/main"
BERT_URL="https://huggingface.co/google-bert/bert-base-uncased/resolve/main"

SAM2_FILES=(sam2.1_hiera_tiny.pt sam2.1_hiera_small.pt sam2.1_hiera_base_plus.pt sam2.1_hiera_large.pt)
# ReferDINO releases, all Swin-B (trained on): coco; coco + Ref-YouTube-VOS; coco + A2D-Sentences;
# MeViS; coco + Ref-YouTube-VOS + MeViS.
REFERDINO_FILES=(coco_swinb.pth ryt_swinb.pth a2d_swinb.pth mevis_swinb.pth ryb_mevis_swinb.pth)
# bert-base-uncased tokenizer and config (the weights come with every ReferDINO checkpoint).
BERT_FILES=(config.json vocab.txt tokenizer.json tokenizer_config.json)

if command -v curl >/dev/null 2>&1; then
  fetch() { curl --fail --location --retry 3 --continue-at - --output "$2" "$1"; }
elif command -v wget >/dev/null 2>&1; then
  fetch() { wget --tries=3 --continue --output-document="$2" "$1"; }
else
  echo "error: neither curl nor wget is installed" >&2
  exit 1
fi

download() {  # url destination
  local url="$1" dest="$2"
  if [[ -s "$dest" ]]; then
    echo "have $dest"
    return 0
  fi
  mkdir -p "$(dirname "$dest")"
  echo "get  $url"
  if ! fetch "$url" "$dest.part"; then
    echo "error: could not download $url" >&2
    echo "       (offline? behind a proxy? download it elsewhere and copy it to $dest)" >&2
    return 1
  fi
  mv "$dest.part" "$dest"
}

get_file() {  # a single file name from any group
  local name="$1"
  case " ${SAM2_FILES[*]} " in *" $name "*) download "$SAM2_URL/$name" "$CKPT_DIR/$name"; return;; esac
  case "$name" in
    *.pth) download "$REFERDINO_URL/$name" "$CKPT_DIR/$name"; return;;
  esac
  case " ${BERT_FILES[*]} " in
    *" $name "*) download "$BERT_URL/$name" "$CKPT_DIR/bert-base-uncased/$name"; return;;
  esac
  echo "error: unknown checkpoint '$name'" >&2
  return 1
}

get_group() {
  local name
  case "$1" in
    sam2) for name in "${SAM2_FILES[@]}"; do get_file "$name"; done;;
    referdino) for name in "${REFERDINO_FILES[@]}"; do get_file "$name"; done;;
    bert) for name in "${BERT_FILES[@]}"; do get_file "$name"; done;;
    all) get_group sam2; get_group referdino; get_group bert;;
    *) get_file "$1";;
  esac
}

if [[ $# -eq 0 ]]; then
  set -- mevis_swinb.pth sam2.1_hiera_large.pt bert
fi
status=0
for target in "$@"; do
  get_group "$target" || status=1
done
if [[ $status -ne 0 ]]; then
  echo "some downloads failed; rerun the same command to resume" >&2
fi
exit $status
