#!/bin/sh
# Runs each fuzz target of FUZZ ("./pkg:FuzzName ...") for FUZZTIME.
# Usage: test/fuzz.sh TAGS FUZZTIME TARGET...
#
# A failing input makes go test write it under PKG/testdata/fuzz/NAME/ and
# fail: that fails this script. Go 1.26's fuzz coordinator also fails a
# run that found nothing when -fuzztime ends while a worker is busy
# ("context deadline exceeded", golang/go#75804, fixed in Go 1.27): such a
# run, with no input written, is reported and not counted as a failure.
set -u
tags=$1 fuzztime=$2
shift 2
for f in "$@"; do
	pkg=${f%%:*} fn=${f#*:}
	echo "fuzz $fn ($pkg, $fuzztime)"
	corpus=$pkg/testdata/fuzz/$fn
	before=$(ls "$corpus" 2>/dev/null | sort)
	log=$(mktemp -t kiln-fuzz.XXXXXX) || exit 1
	if "${GO:-go}" test -tags "$tags" -run XXX -fuzz "^$fn\$" -fuzztime "$fuzztime" -fuzzminimizetime 200x "$pkg" >"$log" 2>&1; then
		tail -n 1 "$log"
	else
		after=$(ls "$corpus" 2>/dev/null | sort)
		if [ "$before" = "$after" ] && grep -q 'context deadline exceeded' "$log" && ! grep -q 'Failing input written' "$log"; then
			echo "$fn: no failing input; go test ended on Go's fuzztime race (context deadline exceeded, golang/go#75804)"
		else
			cat "$log"
			rm -f "$log"
			exit 1
		fi
	fi
	rm -f "$log"
done
