"""Sub-commands of the command line, one module each (see sd_styles/cli.py)."""
