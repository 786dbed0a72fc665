#!/usr/bin/env bash
# Cold-call cost of conv_weights(w, out=o) vs np.copyto(o, w.transpose(0,2,3,1)) vs a
# memcpy of the same bytes, counted by callgrind (no timing: independent of machine load).
#   bench/callgrind/run.sh [O,I,kH,kW]      (default 64,64,3,3; needs valgrind and gcc)
# Prints per contender: Ir (instructions), I1mr (= distinct code lines, the caches start
# empty), D1mr/D1mw (distinct data lines read/written first), then per shared object.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
shape="${1:-64,64,3,3}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
gcc -O2 -shared -fPIC -o "$tmp/libmark.so" "$here/mark.c"
# the interpreter itself, not a launcher script (pyenv's shims): valgrind follows no exec
py="$(python -c 'import sys; print(sys.executable)')"
for who in empty ours numpy memcpy; do
  valgrind --tool=callgrind --instr-atstart=no --cache-sim=yes \
    --callgrind-out-file="$tmp/cg.$who" "$py" "$here/cold_call.py" "$tmp/libmark.so" "$who" "$shape" \
    >/dev/null 2>&1
  f="$(ls "$tmp"/cg."$who".* | tail -1)"  # the dump mark_stop wrote
  read -r ir dr dw i1 d1r d1w _ < <(grep '^totals:' "$f" | cut -d' ' -f2-)
  printf '%-7s Ir %8d  I1mr %4d  D1mr %5d  D1mw %5d\n' "$who" "$ir" "$i1" "$d1r" "$d1w"
  if [ "$who" = ours ] || [ "$who" = numpy ]; then
    callgrind_annotate --threshold=100 --sort=I1mr --show=Ir,I1mr "$f" 2>/dev/null | awk '
      /^ *[0-9,]+ / && !/PROGRAM TOTALS/ {
        obj = "python"; if (match($0, /\[[^]]*\]$/)) { n = split(substr($0, RSTART + 1, RLENGTH - 2), p, "/"); obj = p[n] }
        line = $0; gsub(/\([^)]*\)/, "", line); split(line, f, " ")
        for (i = 1; i <= 2; i++) { v = f[i]; gsub(",", "", v); s[obj, i] += v }; seen[obj] = 1 }
      END { for (o in seen) if (s[o, 2] >= 10) printf "          %-50s Ir %7d  I1mr %4d\n", o, s[o, 1], s[o, 2] }' | sort -k5 -nr
  fi
done
