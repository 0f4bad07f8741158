#!/usr/bin/env sh
# Brushwork launcher: the first run makes a private Python environment in .venv next
# to this file and installs Brushwork into it (system Pythons such as Debian's and
# Ubuntu's refuse `pip install` outside one); later runs start at once.
#
#   ./brushwork.sh generate "a lighthouse at dusk"   any brushwork command
#   ./brushwork.sh serve                             the web studio
#   ./brushwork.sh test [pytest arguments]           install the test extras and run the tests
#   ./brushwork.sh setup-upscalers                   add spandrel, for ESRGAN-family upscaler files
set -eu
HERE="$(cd "$(dirname "$0")" && pwd)"
VENV="${BRUSHWORK_VENV:-$HERE/.venv}"
# torch is pinned: a bare "torch" pulls a multi-GB CUDA build on machines without one;
# on an NVIDIA machine the same pin installs the CUDA build, which Brushwork uses
TORCH="torch==2.13.0"
# upscaler model files load through spandrel, which needs a torchvision built for the very
# same torch (a mismatched one breaks every import, Brushwork's included): so they come as
# a pair, and only with the tests or setup-upscalers (docs/upscalers.md)
case "$(uname -m)" in
  aarch64|arm64) TORCH_PAIR="torch==2.9.1 torchvision==0.24.1" ;;
  *) TORCH_PAIR="torch==2.14.1 torchvision==0.29.1" ;;
esac

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

installed() {  # a stamp newer than pyproject.toml
  [ -f "$1" ] && [ "$1" -nt "$HERE/pyproject.toml" ]
}

install() {  # $1: the extras, e.g. "[test]" or ""; $2: the torch requirement(s)
  stamp="$VENV/.brushwork-installed$1"
  # the test install has everything; the upscalers one holds the plain install too
  if installed "$stamp" || installed "$VENV/.brushwork-installed[test]" || { [ -z "$1" ] && installed "$VENV/.brushwork-installed[upscalers]"; }; then
    return 0
  fi
  echo "brushwork: installing Brushwork$1 and $2 into $VENV (a few minutes the first time) ..." >&2
  # shellcheck disable=SC2086 # $2 may hold two requirements
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check $2 -e "$HERE$1"
  touch "$stamp"
}

[ -x "$VENV/bin/python" ] || make_venv

if [ "${1:-}" = "test" ]; then
  shift
  install "[test]" "$TORCH_PAIR"
  if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1 && [ -z "${BRUSHWORK_CHROMIUM:-}" ]; then
    echo "brushwork: note: no Chromium here, so the web studio's browser tests (tests/test_web_studio.py) will be SKIPPED." >&2
    echo "  To run them: sudo apt install chromium   (or set BRUSHWORK_CHROMIUM to a Chromium binary)" >&2
  fi
  cd "$HERE"
  exec "$VENV/bin/python" -m pytest -q "$@"
fi

if [ "${1:-}" = "setup-upscalers" ]; then
  install "[upscalers]" "$TORCH_PAIR"
  echo "brushwork: upscaler model files can now be used (put them in models/upscalers of the data home; brushwork upscalers lists them)" >&2
  exit 0
fi

# a torchvision in the environment (tests, setup-upscalers) must keep the torch it was built for
if "$VENV/bin/python" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torchvision") is None)' 2>/dev/null; then
  TORCH="$TORCH_PAIR"
fi
install "" "$TORCH"
exec "$VENV/bin/brushwork" "$@"
