"""The `charter` command: the embedded default (`charter up`), the demo and the tools, above
every other package and imported by none."""
