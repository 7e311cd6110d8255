"""Serving: the Redis store of live top-k lists, and the FastAPI app that reads it."""
