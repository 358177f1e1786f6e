"""`python -m jaxalign --config experiments/<file>.py[:arg] ...`: see jaxalign/main.py."""
from jaxalign import main

if __name__ == "__main__":
    main.cli()
