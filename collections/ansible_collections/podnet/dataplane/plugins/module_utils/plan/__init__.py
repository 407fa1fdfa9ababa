# Copyright: podnet contributors
# Apache License 2.0
"""From inventory to plan: validation, backends as compositions, allocation, network policy, CNI."""
