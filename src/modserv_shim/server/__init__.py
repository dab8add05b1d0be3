"""The REST layer (FastAPI): parse, authenticate, call the core, render the envelope."""
