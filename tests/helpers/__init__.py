"""Test fixtures shared by several test modules (model files, fake HF folders)."""
