"""The architecture, checked: pure parts stay torch-free, the core never imports its clients."""
import subprocess
import sys

import pytest


def imported_after(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


@pytest.mark.parametrize("module", ["brushwork.prompts", "brushwork.infotext", "brushwork.hashing", "brushwork.outputs", "brushwork.demo.scenes", "brushwork.demo.colour", "brushwork.canvas", "brushwork.init_image", "brushwork.masks", "brushwork.outpaint"])
def test_pure_modules_do_not_import_torch(module):
    assert "torch" not in imported_after(module)


def test_the_engine_knows_nothing_of_its_clients():
    mods = imported_after("brushwork.engine")
    assert "brushwork.cli" not in mods
    assert not any(m.startswith(("fastapi", "uvicorn", "brushwork.server")) for m in mods)
