#!/usr/bin/env bash
# Each xme crate used alone: a throwaway crate that depends on that crate only
# runs the first Rust example of the crate's README. A type a crate's
# signatures use but does not re-export fails here.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$root/target/standalone"
export CARGO_TARGET_DIR="$work/target"
for crate in xme-core xme-log xme-array xme-exec xme-security xme-shm xme-monitor xme-mpi; do
  dir="$work/$crate"
  mkdir -p "$dir/src"
  cat > "$dir/Cargo.toml" <<TOML
[package]
name = "standalone-$crate"
version = "0.0.0"
edition = "2024"
publish = false

[dependencies]
$crate = { path = "$root/$crate" }

[workspace]
TOML
  # The first ```rust block, with rustdoc's hidden-line markers removed.
  awk '/^```rust/{on=1; next} /^```/{if(on){exit}} on{sub(/^# /, ""); if ($0 == "#") $0 = ""; print}' \
    "$root/$crate/README.md" > "$dir/src/main.rs"
  if [ ! -s "$dir/src/main.rs" ]; then
    echo "$crate/README.md has no Rust example"; exit 1
  fi
  echo "-- $crate alone"
  (cd "$dir" && cargo run -q)
done
echo "every crate runs its README example alone"
