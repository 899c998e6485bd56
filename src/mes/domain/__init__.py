"""Domain rules of the order service: plain Python, no Flask, no database."""
