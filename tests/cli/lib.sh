# Helpers shared by the CLI test scripts (sourced): check, json_get, py_check. The caller sets
# WORK (a temporary directory) and passed=0 failed=0 before sourcing.

check() {  # check NAME EXPECTED_RC PATTERN -- command...
  local name="$1" want_rc="$2" pattern="$3"
  shift 4
  "$@" >"$WORK/out" 2>"$WORK/err"
  local rc=$?
  if [ "$want_rc" = "nonzero" ]; then
    [ "$rc" -ne 0 ] && rc_ok=1 || rc_ok=0
  else
    [ "$rc" -eq "$want_rc" ] && rc_ok=1 || rc_ok=0
  fi
  if [ "$rc_ok" = 1 ] && grep -qE -- "$pattern" "$WORK/out" "$WORK/err"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    echo "FAIL: $name (rc=$rc, want $want_rc, pattern '$pattern')"
    echo "--- stdout"; head -20 "$WORK/out"; echo "--- stderr"; head -20 "$WORK/err"
  fi
}

json_get() {  # json_get FILE EXPR  (python3 expression over `j`)
  python3 -c "import json,sys; j=json.load(open(sys.argv[1])); print($2)" "$1"
}

py_check() {  # py_check NAME -- python args... (script on stdin)
  local name="$1"
  shift 2
  if python3 - "$@"; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAIL: $name"; fi
}
