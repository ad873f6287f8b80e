#!/usr/bin/env bash
# The first-look sequence of a new user, on setup's stamps: a fresh copy of the checkout runs
# scripts/setup.sh first without the shared folder, then with it; the CLIP test fixture must then be
# regenerated with reference texts (no manual step) and pass tests/embed_clip.rs. Called by
# scripts/test.sh after scripts/setup.sh (whose venvs it reuses through links, so nothing is
# downloaded twice); it needs the shared folder (TAGFIX_SHARED, else ../shared) and skips without it.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
shared="${TAGFIX_SHARED:-../shared}"
tokens="$shared/reference/clip_tokens/ram_single_template.jsonl"
if [ ! -f "$tokens" ]; then
  [ "${CI:-}" = true ] && { echo "check-fresh-setup: $tokens missing" >&2; exit 1; }
  echo "SKIPPED check-fresh-setup: $tokens missing (set TAGFIX_SHARED)" >&2
  exit 0
fi
shared="$(cd "$shared" && pwd)"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/tagfix-fresh-setup.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
# The copy lives in $tmp/tagfix, so its ../shared ($tmp/shared) does not exist: the README's
# "set TAGFIX_SHARED" case. Only what setup reads is copied; the venvs are this checkout's.
clone="$tmp/tagfix"
mkdir -p "$clone"
cp -r scripts "$clone/"
ln -s "$root/.venv" "$clone/.venv"
ln -s "$root/.venv-fixtures" "$clone/.venv-fixtures"

texts() {
  "$root/.venv-fixtures/bin/python" -c \
    'import json, sys; print(sum(s["text"] is not None for s in json.load(open(sys.argv[1]))["samples"]))' \
    "$clone/models/clip-tiny/expected.json"
}
echo "check-fresh-setup: setup without the shared folder, in $clone" >&2
(unset TAGFIX_SHARED; "$clone/scripts/setup.sh" 2>"$tmp/setup1.log") || { cat "$tmp/setup1.log" >&2; exit 1; }
first="$(texts)"
echo "check-fresh-setup: setup with TAGFIX_SHARED=$shared" >&2
TAGFIX_SHARED="$shared" "$clone/scripts/setup.sh" 2>"$tmp/setup2.log" || { cat "$tmp/setup2.log" >&2; exit 1; }
second="$(texts)"
echo "check-fresh-setup: reference texts in models/clip-tiny/expected.json: $first without, $second with the shared folder" >&2
if [ "$first" != 0 ] || [ "$second" -lt 3 ]; then
  echo "check-fresh-setup: FAILED: the fixture was not regenerated from the shared token file" >&2
  cat "$tmp/setup2.log" >&2
  exit 1
fi
# The regenerated fixture passes the test that the stale one failed.
TAGFIX_TEST_MODELS="$clone/models" cargo test --all-features --release --quiet --test embed_clip
