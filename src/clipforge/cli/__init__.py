"""The `clipforge` command: one module per subcommand, each exposing `main(argv) -> int`."""
