"""One module per stage of the CLI; `kit.cli` joins them."""
