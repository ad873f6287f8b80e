# The failures in the output of `cargo test --no-fail-fast` (stdout and stderr together), for the
# summary at the end of scripts/test.sh: each failing test under the test binary that ran it, then
# cargo's own list of failed targets (which also names a binary that crashed without a failing test).
/^ *Running / { bin = $2 " " $3; sub(/ \(.*/, "", bin); next }
/^ *Doc-tests / { bin = "doctests " $2; next }
/^test .* \.\.\. FAILED$/ { name = $0; sub(/^test /, "", name); sub(/ \.\.\. FAILED$/, "", name)
  if (!(bin in seen)) { seen[bin] = 1; order[++n] = bin }; tests[bin] = tests[bin] "\n    " name; next }
/^error: [0-9]+ targets? failed:/ { listing = 1; next }
listing && /^ +`/ { gsub(/^ +/, ""); targets = targets (targets == "" ? "" : ", ") $0; next }
{ listing = 0 }
END {
  for (i = 1; i <= n; i++) print "  " order[i] ":" tests[order[i]]
  if (targets != "") print "  failed targets: " targets
  else if (n == 0) print "  no test ran: the build failed (errors above)"
}
