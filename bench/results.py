"""runs/bench.json: every figure `make bench` prints, as flat keys, updated script by script."""
import json
from pathlib import Path

PATH = Path(__file__).resolve().parents[1] / "runs" / "bench.json"


def record(**figures) -> None:
    PATH.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(PATH.read_text()) if PATH.exists() else {}
    data.update(figures)
    PATH.write_text(json.dumps(data, indent=2, sort_keys=True))
