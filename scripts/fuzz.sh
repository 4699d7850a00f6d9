#!/usr/bin/env bash
# Runs every fuzz target of the module (each `func FuzzX(f *testing.F)` in a
# _test.go file) for FUZZTIME, one after the other: `go test -fuzz` takes
# one target a run. FUZZ, a regexp, picks targets by package or name;
# FUZZFLAGS goes to each `go test` (e.g. -parallel 1). Prints each target
# as it runs and a summary; exits 1 if any failed, its failing input left
# in the package's testdata/fuzz/FuzzX/ (commit it as a regression seed
# with the fix). `make test` runs the same targets on their seed corpora.
set -euo pipefail
fuzztime=${FUZZTIME:-2m}
pick=${FUZZ:-.}
export PATH="$PATH:/usr/local/go/bin"
cd "$(dirname "$0")/.."

# "dir name" lines, sorted: the targets as the source declares them.
mapfile -t targets < <(grep -rE --include='*_test.go' '^func Fuzz[A-Za-z0-9_]*\(f \*testing\.F\)' . |
  sed -E 's|^\./(.*)/[^/]*_test\.go:func (Fuzz[A-Za-z0-9_]*).*|\1 \2|' | sort | grep -E -- "$pick" || true)
if [ ${#targets[@]} -eq 0 ]; then
  echo "fuzz: no target matches FUZZ=$pick" >&2
  exit 1
fi
logs=$(mktemp -d "${TMPDIR:-/tmp}/mas4h-fuzz.XXXXXX")
echo "fuzz: ${#targets[@]} targets, $fuzztime each; logs in $logs"
start=$SECONDS
failed=()
summary=()
for t in "${targets[@]}"; do
  dir=${t% *} name=${t#* }
  log="$logs/${dir//\//_}.$name.log"
  printf 'fuzz: %-28s %-24s ' "$dir" "$name"
  t0=$SECONDS
  # shellcheck disable=SC2086 # FUZZFLAGS is a list of flags
  if go test -run '^$' -fuzz "^$name\$" -fuzztime "$fuzztime" ${FUZZFLAGS:-} "./$dir" >"$log" 2>&1; then
    result=ok
  else
    result=FAIL
    failed+=("$dir $name")
  fi
  execs=$(grep -oE 'execs: [0-9]+' "$log" | tail -1 | cut -d' ' -f2 || true)
  line=$(printf '%-4s %-28s %-24s %5ds %12s execs' "$result" "$dir" "$name" $((SECONDS - t0)) "${execs:-0}")
  echo "${line%% *}  $((SECONDS - t0))s, ${execs:-0} execs"
  summary+=("$line")
  if [ "$result" = FAIL ]; then
    grep -vE '^fuzz: elapsed' "$log" | tail -25 | sed 's/^/    /'
  fi
done
echo
echo "fuzz: ran ${#targets[@]} targets in $((SECONDS - start))s (FUZZTIME=$fuzztime):"
printf '  %s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: ${#failed[@]} failed: ${failed[*]}; failing inputs are in each package's testdata/fuzz/" >&2
  exit 1
fi
