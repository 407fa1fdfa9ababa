"""QEMU guest helpers for tests that need a kernel this machine lacks (DESIGN.md section 6)."""
