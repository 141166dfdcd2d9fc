"""Image decoding, encoding and output-size rules, with numpy and Pillow only (no torch)."""
