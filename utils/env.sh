# Sourced by train.sh, eval.sh, infer.sh and tests/run.sh from the repository root:
# creates the virtual environment on first use and installs requirements.txt into it.
VENV="${DFORMER_VENV:-.venv}"
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac  # DFORMER_VENV may be relative or absolute
if [ ! -x "$VENV/bin/python" ] || [ requirements.txt -nt "$VENV/.installed" ]; then
  echo "Setting up $VENV (first run only) ..."
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -r requirements.txt
  touch "$VENV/.installed"
fi
export PATH="$VENV/bin:$PATH"
