#!/usr/bin/env bash
# The README's two quick-start commands on a "fresh machine": a clean clone of this
# repository (committed files only), an empty HOME and data home, no Brushwork
# environment yet, and no Chromium on PATH.  Prints how long each command took.
#
#   tools/fresh_machine_check.sh            command 1 in full; command 2 on a quick subset
#   tools/fresh_machine_check.sh --full     command 2 runs the whole suite
#
# Exit status: 0 when both commands worked and the picture exists, else 1.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/brushwork-fresh.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
TESTS=(tests/test_cli.py tests/test_styles.py -x)
[ "${1:-}" = "--full" ] && TESTS=()

git clone -q "$REPO" "$WORK/brushwork"
mkdir -p "$WORK/home" "$WORK/bin"
# PATH without Chromium: every tool of /usr/bin except chromium, and the real Python
# (not a pyenv shim, which needs its own environment)
for f in /usr/bin/* /usr/local/bin/*; do
  case "$(basename "$f")" in chromium*|python3*|pip*) ;; *) ln -sf "$f" "$WORK/bin/" ;; esac
done
real_python="$(python3 -c 'import sys; print(sys.executable)')"
ln -sf "$real_python" "$WORK/bin/python3"
CLEAN_ENV=(env -i "HOME=$WORK/home" "PATH=$WORK/bin" "LANG=C.UTF-8" "TMPDIR=$WORK")
while IFS='=' read -r name value; do  # the machine's package index settings, if any
  case "$name" in PIP_*) CLEAN_ENV+=("$name=$value") ;; esac
done < <(env)
cd "$WORK/brushwork"

status=0
start=$(date +%s)
# --- README quick start, command 1 ---
"${CLEAN_ENV[@]}" ./brushwork.sh generate "cinematic landscape, great mountain" >"$WORK/one.out" 2>"$WORK/one.err" || status=1
one=$(( $(date +%s) - start ))
cat "$WORK/one.err" "$WORK/one.out"
picture="$(awk -F'  seed ' 'NF > 1 {print $1; exit}' "$WORK/one.out")"
if [ -z "$picture" ] || [ ! -s "$picture" ]; then
  echo "FAIL: command 1 made no picture" >&2
  status=1
fi

start=$(date +%s)
# --- README quick start, command 2 (here on ${TESTS[*]:-the whole suite}) ---
"${CLEAN_ENV[@]}" ./brushwork.sh test "${TESTS[@]}" >"$WORK/two.out" 2>&1 || status=1
two=$(( $(date +%s) - start ))
tail -n 5 "$WORK/two.out"
grep -q "no Chromium here" "$WORK/two.out" || { echo "FAIL: command 2 did not say that the browser tests are skipped without Chromium" >&2; status=1; }

echo "fresh machine: command 1 (install + first picture) ${one} s, command 2 (test install + ${TESTS[*]:-all tests}) ${two} s, status $status"
exit $status
