#!/usr/bin/env sh
# Brushwork launcher: the first run makes a private Python environment in .venv next
# to this file and installs Brushwork into it (system Pythons such as Debian's and
# Ubuntu's refuse `pip install` outside one); later runs start at once.
#
#   ./brushwork.sh generate "a lighthouse at dusk"   any brushwork command
#   ./brushwork.sh serve                             the web studio
#   ./brushwork.sh test [pytest arguments]           install the test extras and run the tests
set -eu
HERE="$(cd "$(dirname "$0")" && pwd)"
VENV="${BRUSHWORK_VENV:-$HERE/.venv}"
# torch is pinned: a bare "torch" pulls a multi-GB CUDA build on machines without one;
# on an NVIDIA machine the same pin installs the CUDA build, which Brushwork uses
TORCH="torch==2.13.0"

find_python() {
  for p in python3.13 python3.12 python3.11 python3; do
    if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$p"
      return 0
    fi
  done
  return 1
}

make_venv() {
  PY="$(find_python)" || {
    echo "brushwork: needs Python 3.11 or newer (python3 --version says: $(python3 --version 2>&1 || echo 'no python3'))." >&2
    echo "  Debian/Ubuntu: sudo apt install python3 python3-venv   macOS: brew install python@3.12" >&2
    exit 2
  }
  echo "brushwork: first run: making a Python environment in $VENV (once) ..." >&2
  if ! "$PY" -m venv "$VENV" >/dev/null 2>&1; then
    rm -rf "$VENV"
    if command -v uv >/dev/null 2>&1; then
      uv venv -q --python "$PY" "$VENV"
      "$VENV/bin/python" -m ensurepip -q >/dev/null 2>&1 || uv pip install -q --python "$VENV/bin/python" pip
    else
      echo "brushwork: $PY cannot make a virtual environment: the venv module is missing." >&2
      echo "  Debian/Ubuntu: sudo apt install python3-venv   (then run this again)" >&2
      exit 2
    fi
  fi
}

install() {  # $1: the extras, e.g. "[test]" or ""
  stamp="$VENV/.brushwork-installed$1"
  for done in "$stamp" "$VENV/.brushwork-installed[test]"; do  # the test install has everything
    if [ -f "$done" ] && [ "$done" -nt "$HERE/pyproject.toml" ]; then
      return 0
    fi
  done
  echo "brushwork: installing Brushwork$1 and $TORCH into $VENV (a few minutes the first time) ..." >&2
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$TORCH" -e "$HERE$1"
  touch "$stamp"
}

[ -x "$VENV/bin/python" ] || make_venv

if [ "${1:-}" = "test" ]; then
  shift
  install "[test]"
  if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1 && [ -z "${BRUSHWORK_CHROMIUM:-}" ]; then
    echo "brushwork: note: no Chromium here, so the web studio's browser tests (tests/test_web_studio.py) will be SKIPPED." >&2
    echo "  To run them: sudo apt install chromium   (or set BRUSHWORK_CHROMIUM to a Chromium binary)" >&2
  fi
  cd "$HERE"
  exec "$VENV/bin/python" -m pytest -q "$@"
fi

install ""
exec "$VENV/bin/brushwork" "$@"
