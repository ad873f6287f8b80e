# Sourced by benchmark scripts: `base_build REV` builds tagfix (all features) at revision REV in a
# git worktree (target/bench-base-train/tree, its own target folder target/bench-base-train, both
# kept between runs so that the binary's run path to libtorch stays valid; the first build takes
# minutes) and prints the binary's path.
base_build() {
  local tree=target/bench-base-train/tree
  if [ -d "$tree" ]; then
    git -C "$tree" checkout --quiet --detach "$1"
  else
    mkdir -p target/bench-base-train
    git worktree add --quiet --detach "$tree" "$1"
  fi
  local link
  for link in .libtorch .deps .venv; do ln -sfn "$PWD/$link" "$tree/$link"; done
  (cd "$tree" && CARGO_TARGET_DIR="$OLDPWD/target/bench-base-train" cargo build --release --all-features --quiet --bin tagfix) >&2
  echo target/bench-base-train/release/tagfix
}
