"""Regenerate docs/openapi.json from the HTTP API's resolver (the routes and pydantic models are the source).

python tools/gen_openapi.py            # rewrite docs/openapi.json
python tools/gen_openapi.py --check    # exit 1 when the committed file differs from the code
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "functions" / "api" / "app.py"
SPEC = ROOT / "docs" / "openapi.json"


def load_api_app() -> ModuleType:
    """functions/api/app.py under a unique module name (every function's handler module is called app)."""
    layer = str(ROOT / "layers" / "credits_ledger")
    if layer not in sys.path:
        sys.path.insert(0, layer)
    existing = sys.modules.get("credits_api_app")
    if existing is not None:
        return existing
    spec = importlib.util.spec_from_file_location("credits_api_app", APP)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["credits_api_app"] = module
    spec.loader.exec_module(module)
    return module


def render() -> str:
    text: str = load_api_app().openapi_spec()
    return text


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not SPEC.exists() or SPEC.read_text(encoding="utf-8") != text:
            print(f"{SPEC.relative_to(ROOT)} is stale: run python tools/gen_openapi.py", file=sys.stderr)
            return 1
        return 0
    SPEC.write_text(text, encoding="utf-8")
    print(f"wrote {SPEC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
