"""The command line: ``python -m amlight`` (main.py), the LightningCLI set-up for fit/validate/test/predict
and its one-line error wording, and the project's own commands (commands/, each a module with ``main(argv)``)."""
