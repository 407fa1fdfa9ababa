"""Make the collection importable as `ansible_collections.podnet.dataplane` for unit tests."""
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "collections"))
