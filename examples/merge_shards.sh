#!/usr/bin/env bash
# Merge the shards written by examples/extract_shard.sh into one cache equal to an unsharded extraction.
#   SLURM: sbatch --dependency=afterok:<array job id> examples/merge_shards.sh
set -euo pipefail
SHARD_DIR=${SHARD_DIR:-shards}
OUT=${OUT:-featcache.h5}
FEATCACHE=${FEATCACHE:-featcache}
# shellcheck disable=SC2086
$FEATCACHE merge "$SHARD_DIR"/shard*.h5 --cache "$OUT"
# merge keeps a partial result (merge the missing shards later); the check fails the job until every row is there
$FEATCACHE info --check --cache "$OUT" > /dev/null
