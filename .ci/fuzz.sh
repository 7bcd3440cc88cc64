#!/usr/bin/env bash
# .ci/fuzz.sh: runs every fuzz target in the repository for a short,
# bounded time, so that a regression in the parsers (DATA decoder, whole
# SMTP sessions, router, tokens, header parsers, DKIM/ARC tag lists) is
# caught in CI. Targets are found, not listed:
# every `func FuzzXxx(f *testing.F)` in a *_test.go file.
#
#   FUZZTIME  time per target (default 10s; go test -fuzztime syntax)
#
# A failure leaves the crashing input in <package>/testdata/fuzz/<target>/;
# commit it with the fix so that `go test` replays it forever after.
#
# Long runs (before a release, or after touching a parser), one target at a
# time, e.g.:
#   FUZZTIME=10m .ci/fuzz.sh
#   go test -run '^$' -fuzz '^FuzzRoute$' -fuzztime 1h ./router
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin:$HOME/go/bin"
FUZZTIME=${FUZZTIME:-10s}

mapfile -t targets < <(grep -rE --include='*_test.go' '^func Fuzz[A-Za-z0-9_]*\(' . |
	grep -v '/vendor/' |
	sed -E 's#^\./(.*)/[^/]+_test\.go:func (Fuzz[A-Za-z0-9_]*)\(.*#\1 \2#; s#^\./[^/]+_test\.go:func (Fuzz[A-Za-z0-9_]*)\(.*#. \1#' |
	sort -u)
if [ "${#targets[@]}" -eq 0 ]; then
	echo "fuzz: no fuzz targets found" >&2
	exit 1
fi
echo "fuzz: ${#targets[@]} targets, $FUZZTIME each"
start=$SECONDS
failed=()
for t in "${targets[@]}"; do
	pkg=${t% *}
	name=${t#* }
	t0=$SECONDS
	ok=0
	for attempt in 1 2 3; do
		# Run from the package's directory: third_party/go-smtp is a module
		# of its own, which "./third_party/go-smtp" from here is not part of.
		if (cd "$pkg" && go test -run '^$' -fuzz "^${name}\$" -fuzztime "$FUZZTIME" .) >/tmp/fuzz.$$.log 2>&1; then
			ok=1
			break
		fi
		# Go's fuzzing coordinator sometimes ends a run that found nothing
		# with "context deadline exceeded" (a worker still busy when the
		# time is up). A real failure names its input; that one is retried.
		if grep -q 'Failing input written to' /tmp/fuzz.$$.log || ! grep -q 'context deadline exceeded' /tmp/fuzz.$$.log; then
			break
		fi
		printf 'fuzz: retry %-28s ./%s (the fuzzer timed out without a failing input)\n' "$name" "$pkg"
	done
	if [ "$ok" = 1 ]; then
		printf 'fuzz: ok    %-28s ./%s (%ds)\n' "$name" "$pkg" $((SECONDS - t0))
	else
		printf 'fuzz: FAIL  %-28s ./%s (%ds)\n' "$name" "$pkg" $((SECONDS - t0))
		tail -40 /tmp/fuzz.$$.log
		failed+=("$pkg $name")
	fi
done
rm -f /tmp/fuzz.$$.log
echo "fuzz: done in $((SECONDS - start))s"
if [ "${#failed[@]}" -gt 0 ]; then
	printf 'fuzz: failed: %s\n' "${failed[@]}" >&2
	exit 1
fi
