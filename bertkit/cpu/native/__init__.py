"""The encoder as compiled C++ kernels (encoder.cpp, built on first use; encoder.py loads and calls them)."""
