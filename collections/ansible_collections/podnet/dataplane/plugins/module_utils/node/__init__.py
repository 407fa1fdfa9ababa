# Copyright: podnet contributors
# Apache License 2.0
"""A node's run: node_apply's steps and render, the node lock, files and boot records, the boot restore."""
