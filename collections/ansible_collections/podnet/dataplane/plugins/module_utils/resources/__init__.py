# Copyright: podnet contributors
# Apache License 2.0
"""The resource modules' work (one module each), shared with node_apply; their common base."""
