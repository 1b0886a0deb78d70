# Shared by scripts/test, scripts/test-pythons and scripts/gateway: create a venv (.venv, or
# $VENV) with $PYTHON (python3 by default) and install the project into it.
# Re-installs only when pyproject.toml changed since the last install.
setup_venv() {
  local extras="$1"
  local py="${PYTHON:-python3}"
  local venv="${VENV:-.venv}"
  if [ ! -x "$venv/bin/python" ]; then
    echo "== creating $venv with $($py --version)"
    "$py" -m venv "$venv"
  fi
  local stamp="$venv/.installed-$extras"
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "== installing gateway-redis[$extras] into $venv"
    # (this machine's pip config names local mirrors that may be absent: drop that noise)
    "$venv/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored: it is neither" || true
    "$venv/bin/python" -m pip install -q -e ".[$extras]" 2>&1 | grep -v "is ignored: it is neither" || true
    "$venv/bin/python" -c "import gateway_redis, middleware" || { echo "installation failed"; return 1; }
    touch "$stamp"
  fi
}
