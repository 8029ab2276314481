"""Triton kernels: one op per file, read in order kernel(s) → launcher → public function."""
