#!/usr/bin/env bash
# One shard of a featcache extraction, as a SLURM array task or a Kubernetes indexed-job pod.
#
#   SLURM:       sbatch --array=0-3 --gres=gpu:1 examples/extract_shard.sh        (then examples/merge_shards.sh)
#   Kubernetes:  examples/k8s-indexed-job.yaml runs it with JOB_COMPLETION_INDEX and SHARDS set
#
# Run from the database folder (or pass --root/--dataset after the script's name). Each task writes
# $SHARD_DIR/shard<I>.h5; extra arguments go to `featcache extract`. A task that dies is rerun as is: it resumes.
#SBATCH --job-name=featcache-extract
#SBATCH --cpus-per-task=16
set -euo pipefail
BACKBONE=${BACKBONE:-vit_large_patch16_224}
SHARD_DIR=${SHARD_DIR:-shards}
FEATCACHE=${FEATCACHE:-featcache}
INDEX=${SLURM_ARRAY_TASK_ID:-${JOB_COMPLETION_INDEX:-}}
COUNT=${SLURM_ARRAY_TASK_COUNT:-${SHARDS:-}}
if [[ -z "$INDEX" || -z "$COUNT" ]]; then
    echo "error: set SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT (SLURM) or JOB_COMPLETION_INDEX/SHARDS (Kubernetes)" >&2
    exit 2
fi
mkdir -p "$SHARD_DIR"
# shellcheck disable=SC2086
$FEATCACHE extract --backbone "$BACKBONE" --shard "$INDEX/$COUNT" --cache "$SHARD_DIR/shard$INDEX.h5" --quiet "$@"
