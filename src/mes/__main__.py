"""`python -m mes` runs the mes command."""
from .cli import main

main()
