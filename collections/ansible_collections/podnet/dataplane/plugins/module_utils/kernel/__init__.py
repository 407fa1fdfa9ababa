# Copyright: podnet contributors
# Apache License 2.0
"""Typed kernel objects, the netlink engine that reads, diffs and writes them, and ownership."""
