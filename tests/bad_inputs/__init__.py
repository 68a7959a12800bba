"""The bad-input corpus (``bad_inputs.corpus``) and its test; a package so the test imports the corpus by name."""
