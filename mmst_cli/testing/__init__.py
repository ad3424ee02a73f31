"""Test helpers for mmst: tiny, offline, random-weight models of real transformers architectures."""
