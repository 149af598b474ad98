"""The project's own subcommands (synth, data, ...), each a module with main(argv)."""
