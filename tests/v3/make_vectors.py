"""Regenerate the frozen v3 known-answer vectors in tests/vectors/v3/.

    .venv/bin/python tests/v3/make_vectors.py

Run it only when the v3 wire format or key schedule changes on purpose, and say so in the commit:
test_v3_vectors.py fails on any byte that differs from the frozen files.
"""

from v3_vectors import VECTORS_DIR, write_vectors

if __name__ == "__main__":
    write_vectors()
    print(f"wrote {VECTORS_DIR}")
