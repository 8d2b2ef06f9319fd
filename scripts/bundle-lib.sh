# Sourced by scripts/gpu-check, gpu-ab and gpu-try (not run): the plumbing of a bundle from
# scripts/gpu-bundle on the GPU machine. Run from the checkout's root.

# bundle_dir PATH: prints PATH, or the folder the archive PATH.txz extracts to (next to it, extracted
# once); fails when there is no gptoss in it.
bundle_dir() {
  local p=${1%.txz}
  if [ ! -d "$p" ] && [ -f "$p.txz" ]; then tar -xJf "$p.txz" -C "$(dirname "$p")" || return 1; fi
  [ -x "$p/gptoss" ] || { echo "no gptoss in $p" >&2; return 1; }
  echo "$p"
}

# bundle_link_source DIR: the tests of bundle DIR read fixtures from the source path compiled into
# them (DIR/source_dir); make that path lead to this checkout when it does not exist.
bundle_link_source() {
  [ -f "$1/source_dir" ] || return 0
  local src
  src=$(cat "$1/source_dir")
  [ -e "$src" ] || { mkdir -p "$(dirname "$src")" && ln -s "$PWD" "$src"; }
}

# sanitizer_path: compute-sanitizer on PATH, else the CUDA toolkit's.
sanitizer_path() {
  command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer
}

# bundle_libs DIR...: the library path for running bundles DIR...: their lib/ folders (absolute, for
# those that have one), then the machine's cuBLAS, which bundles leave out (scripts/cublas-path;
# nothing when it has none: bundles without a cuBLAS dependency run without it).
bundle_libs() {
  local libs="" d c
  for d in "$@"; do [ -d "$d/lib" ] && libs="$libs:$(cd "$d/lib" && pwd)"; done
  c=$(scripts/cublas-path 2>/dev/null) && libs="$libs:$c"
  echo "${libs#:}"
}
