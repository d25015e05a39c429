"""`python -m sd_styles` is the `sd-styles` command line."""

from .cli import main

raise SystemExit(main())
