#!/usr/bin/env bash
# Download model weights into checkpoints/ (or $CKPT_DIR).
#
#   bash download_ckpts.sh            # what the default pipeline needs: mevis_swinb, SAM 2.1 large, BERT
#   bash download_ckpts.sh all        # every SAM 2.1 size and every ReferDINO release
#   bash download_ckpts.sh sam2 referdino bert   # groups
#   bash download_ckpts.sh sam2.1_hiera_tiny.pt ryt_swinb.pth   # single files
#
# Each file is fetched into $CKPT_DIR/.partial/ and moved to its place only when complete, so a
# failed download never leaves a file or an empty folder where the pipeline looks; rerunning the
# same command resumes interrupted downloads and skips the files already there. Every file's
# outcome is printed, then a summary; the exit status is non-zero when any file failed.
# SAM2_URL, REFERDINO_URL and BERT_URL can point at a mirror.
set -uo pipefail

CKPT_DIR="${CKPT_DIR:-$(cd "$(dirname "$0")" && pwd)/checkpoints}"
PARTIAL_DIR="$CKPT_DIR/.partial"
SAM2_URL="${SAM2_URL:-https://dl.fbaipublicfiles.com/segment_anything_2/092824}"
REFERDINO_URL="${REFERDINO_URL:-https://huggingface.co/liangtm/referdino/resolve/main}"
BERT_URL="${BERT_URL:-https://huggingface.co/google-bert/bert-base-uncased/resolve/main}"

SAM2_FILES=(sam2.1_hiera_tiny.pt sam2.1_hiera_small.pt sam2.1_hiera_base_plus.pt sam2.1_hiera_large.pt)
# ReferDINO releases, all Swin-B (trained on): coco; coco + Ref-YouTube-VOS; coco + A2D-Sentences;
# MeViS; coco + Ref-YouTube-VOS + MeViS.
REFERDINO_FILES=(coco_swinb.pth ryt_swinb.pth a2d_swinb.pth mevis_swinb.pth ryb_mevis_swinb.pth)
# bert-base-uncased tokenizer and config (the weights come with every ReferDINO checkpoint).
BERT_DIR=bert-base-uncased
BERT_FILES=(config.json vocab.txt tokenizer.json tokenizer_config.json)

if command -v curl >/dev/null 2>&1; then
  fetch() { curl --fail --silent --show-error --location --retry 3 --continue-at - --output "$2" "$1"; }
elif command -v wget >/dev/null 2>&1; then
  fetch() { wget --quiet --tries=3 --continue --output-document="$2" "$1"; }
else
  echo "error: neither curl nor wget is installed" >&2
  exit 1
fi

downloaded=() present=() failed=()

download() {  # url, destination relative to $CKPT_DIR
  local url="$1" name="$2"
  local dest="$CKPT_DIR/$name" part="$PARTIAL_DIR/$name.part"
  if [[ -s "$dest" ]]; then
    echo "have    $name"
    present+=("$name")
    return 0
  fi
  mkdir -p "$(dirname "$part")"
  echo "get     $name  <- $url"
  if fetch "$url" "$part" && [[ -s "$part" ]]; then
    mkdir -p "$(dirname "$dest")"
    mv "$part" "$dest"
    echo "ok      $name"
    downloaded+=("$name")
  else
    echo "FAILED  $name  (offline? behind a proxy? download $url elsewhere and copy it to $dest)" >&2
    failed+=("$name")
  fi
}

get_file() {  # a single file name from any group
  local name="$1"
  case " ${SAM2_FILES[*]} " in *" $name "*) download "$SAM2_URL/$name" "$name"; return;; esac
  case "$name" in
    *.pth) download "$REFERDINO_URL/$name" "$name"; return;;
  esac
  case " ${BERT_FILES[*]} " in
    *" $name "*) download "$BERT_URL/$name" "$BERT_DIR/$name"; return;;
  esac
  echo "FAILED  $name  (unknown checkpoint; groups: sam2 referdino bert all)" >&2
  failed+=("$name")
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
for target in "$@"; do
  get_group "$target"
done
# no trace of the staging folder unless a failed download left a file to resume
[[ -d "$PARTIAL_DIR" ]] && find "$PARTIAL_DIR" -depth -type d -empty -delete

echo "downloaded ${#downloaded[@]}, already there ${#present[@]}, failed ${#failed[@]} (in $CKPT_DIR)"
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "failed: ${failed[*]}; rerun the same command to retry (interrupted files resume)" >&2
  exit 1
fi
